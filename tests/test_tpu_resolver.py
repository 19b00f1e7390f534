"""--tpu on a machine without a TPU: what dbdist's TPU resolver reaches for each value.

TensorFlow's TPUClusterResolver finds a named TPU through two services: the GCE metadata server
(this VM's project and zone) and the Cloud TPU API (projects.locations.nodes.get, for the
workers' addresses). Both are replaced here by recorders, so no test touches the network or
waits on it; "local" must reach neither, whatever $TPU_NAME says.
"""

import pytest
import tensorflow as tf
from tensorflow.python.distribute.cluster_resolver.tpu import tpu_cluster_resolver as tf_tpu_resolver

from dbdist.training import strategy

# The module TensorFlow's resolver talks to the cloud with (TensorFlow's own copy of
# cloud_tpu_client unless that package is installed).
CLOUD = tf_tpu_resolver.client
DENIED = "<HttpError 403: Permission 'tpu.nodes.get' denied on 'projects/test-project/locations/us-central2-b/nodes/db-pod'>"


class _FakeTpuApi:
    """projects().locations().nodes().get(name=...).execute() of the Cloud TPU API: records, then denies."""

    def __init__(self, reached):
        self.reached = reached

    def projects(self):
        return self

    def locations(self):
        return self

    def nodes(self):
        return self

    def get(self, name):
        self.reached.append(("tpu.nodes.get", name))
        return self

    def execute(self):
        raise RuntimeError(DENIED)  # what a service account without roles/tpu.viewer gets


@pytest.fixture
def reached(monkeypatch):
    """Every call the resolver makes to the metadata server or the Cloud TPU API, in order."""
    calls = []
    answers = {"project/project-id": "test-project", "instance/zone": "projects/123/zones/us-central2-b"}

    def metadata(path):
        calls.append(("metadata", path))
        return answers[path]

    monkeypatch.setattr(CLOUD, "_request_compute_metadata", metadata)
    monkeypatch.setattr(CLOUD.Client, "_tpu_service", lambda self: _FakeTpuApi(calls))
    return calls


@pytest.mark.parametrize("tpu_name_env", [None, "some-other-tpu"])
def test_local_is_this_hosts_tpu_and_reaches_no_service(reached, monkeypatch, tpu_name_env):
    if tpu_name_env is None:
        monkeypatch.delenv("TPU_NAME", raising=False)
    else:
        monkeypatch.setenv("TPU_NAME", tpu_name_env)  # must not turn "local" into a Cloud TPU API lookup
    resolver = strategy.tpu_cluster_resolver("local")
    # The local-device path: no gRPC master, no cluster of workers to look up.
    assert resolver.master() == ""
    assert resolver.cluster_spec().as_dict() == {}
    assert reached == []


def test_a_name_is_looked_up_in_the_cloud_tpu_api_and_a_denial_names_the_tpu(reached, monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(RuntimeError) as err:
        strategy.make_strategy("tpu", tpu="db-pod")
    assert reached == [("metadata", "project/project-id"), ("metadata", "instance/zone"),
                       ("tpu.nodes.get", "projects/test-project/locations/us-central2-b/nodes/db-pod")]
    message = str(err.value)
    assert message.startswith("--strategy=tpu could not reach the TPU VM 'db-pod' through the Cloud TPU API")
    assert "roles/tpu.viewer" in message and DENIED in message


def test_an_empty_tpu_is_refused_before_any_lookup(reached):
    with pytest.raises(ValueError, match=r"--tpu must be 'local' \(this host's TPU\), a TPU VM name or grpc://host:8470, got ''"):
        strategy.tpu_cluster_resolver("")
    assert reached == []


def test_no_tpu_here_is_a_dbdist_error_naming_this_hosts_tpu(reached, monkeypatch):
    """--tpu=local on a machine without a TPU ends in dbdist's error, not a hang or a TensorFlow traceback."""
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(RuntimeError, match=r"--strategy=tpu could not reach this host's TPU .*TPUs not found"):
        strategy.make_strategy("tpu", tpu="local")
    assert reached == []
    assert tf.config.list_logical_devices("TPU") == []
