"""What `dbdist.evaluate` asks a toy model to draw, and how the judge's verdicts score it.

- subject fidelity: share of "<instance prompt>" images that show the subject (world.SUBJECT);
- recontextualisation: share of "<instance prompt> on a <bg> background" images that show the
  subject AND that background, averaged over the world's backgrounds;
- prior preservation: share of "<class prompt>" images that show an ordinary object of the
  class (the class's shape, not the subject): what the DreamBooth paper calls language drift;
- prompt fidelity: share of "a photo of a <colour> ball on a <bg> background" images whose
  object, colour and background are the asked ones.
"""

from dbdist.errors import UserError
from dbdist.toy import world

# The prompts of `make demo` (dbdist/demo.py), also those a base model is evaluated with.
DEMO_INSTANCE_PROMPT = "a photo of a sks ball"
DEMO_CLASS_PROMPT = "a photo of a ball"
# Colour-background pairs of the prompt-fidelity prompts: every colour and background at least once.
BASE_PAIRS = (("red", "grey"), ("green", "sand"), ("blue", "pink"), ("yellow", "sky"), ("purple", "grey"))


def class_object(class_prompt):
    """The world object a class prompt names ("a photo of a ball" -> "ball")."""
    named = [o for o in world.OBJECTS if o in class_prompt.split()]
    if len(named) != 1:
        raise UserError(f"class prompt {class_prompt!r} must name exactly one of the toy world's objects "
                        f"{world.OBJECTS}")
    return named[0]


def prompts(instance_prompt, class_prompt):
    """{key: prompt}; keys are 'subject', 'recontext/<bg>', 'class', 'base/<colour>/<bg>'."""
    out = {}
    if instance_prompt:
        out["subject"] = instance_prompt
        out.update({f"recontext/{bg}": f"{instance_prompt} on a {bg} background" for bg in world.BACKGROUNDS})
    if class_prompt:
        class_object(class_prompt)
        out["class"] = class_prompt
    out.update({f"base/{c}/{bg}": f"a photo of a {c} ball on a {bg} background" for c, bg in BASE_PAIRS})
    return out


def _share(flags):
    return sum(flags) / len(flags) if flags else None


def score(verdicts, class_prompt=""):
    """{metric: share in [0, 1]} from {prompt key: [Verdict, ...]}."""
    result = {}
    if "subject" in verdicts:
        result["subject_fidelity"] = _share([v.is_subject() for v in verdicts["subject"]])
        per_background = {key.split("/")[1]: _share([v.is_subject() and v.background == key.split("/")[1] for v in vs])
                          for key, vs in verdicts.items() if key.startswith("recontext/")}
        result["recontextualisation"] = _share(list(per_background.values()))
        result.update({f"recontextualisation/{bg}": s for bg, s in per_background.items()})
        result["recontextualisation/subject_kept"] = _share([v.is_subject() for key, vs in verdicts.items()
                                                             if key.startswith("recontext/") for v in vs])
    if "class" in verdicts:
        wanted = class_object(class_prompt)
        result["prior_preservation"] = _share([v.object == wanted and not v.is_subject() for v in verdicts["class"]])
        result["class_is_subject"] = _share([v.is_subject() for v in verdicts["class"]])
    base = [(key.split("/")[1:], v) for key, vs in verdicts.items() if key.startswith("base/") for v in vs]
    result["prompt_fidelity"] = _share([v.object == "ball" and v.colour == c and v.background == bg
                                        for (c, bg), v in base])
    result["prompt_fidelity/colour"] = _share([v.colour == c for (c, _), v in base])
    result["prompt_fidelity/background"] = _share([v.background == bg for (_, bg), v in base])
    return result
