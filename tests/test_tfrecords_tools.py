"""tfrecords_tools reads records through the same feature spec as the trainer."""

from tfrecords_tools.inspect import describe


def test_inspect_describes_counts_prompts_and_shards(records_dir):
    summary = describe(str(records_dir))
    assert (summary["preset"], summary["resolution"], summary["embedding_shape"]) == ("tiny", 64, [77, 32])
    instance, cls = summary["kinds"]["instance"], summary["kinds"]["class"]
    assert (instance["records"], cls["records"]) == (3, 4)
    assert instance["prompts"] == ["a photo of sks ball"] and cls["prompts"] == ["a photo of ball"]
    assert sorted(instance["sources"]) == ["instance-000.png", "instance-001.png", "instance-002.png"]
    assert all(size > 1000 for size in instance["shard_bytes"].values())
