"""Run by the config tests under a reference interpreter (4.37 or the current release): JSON in, JSON out.

stdin: {"out_dir": str, "cases": [{"name", "cls", "kwargs", "ours_dir", "fields"}]}
stdout (last line): {name: {"to_dict", "diff", "saved_text", "reloaded", "from_ours", "from_ours_fields"}},
plus "__signatures__": {class name: [[argument, default], ...]} for the classes of the cases.
"""

import inspect
import json
import os
import sys

import transformers
from transformers.models.mpt.configuration_mpt import MptAttentionConfig


def plain(value):
    """JSON-ready copy: nested configs as dicts, dtypes as names."""
    if isinstance(value, transformers.PretrainedConfig):
        return value.to_dict()
    if type(value).__module__.startswith("torch"):
        return str(value).rsplit(".", 1)[-1]
    return value


def main():
    job = json.load(sys.stdin)
    results = {"__signatures__": {}}
    for case in job["cases"]:
        cls = MptAttentionConfig if case["cls"] == "MptAttentionConfig" else getattr(transformers, case["cls"])
        results["__signatures__"][case["cls"]] = [
            [p.name, p.default]
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        result = {}
        if case.get("build", True):
            config = cls(**case["kwargs"])
            result["to_dict"] = config.to_dict()
            result["diff"] = json.loads(config.to_json_string())
            folder = os.path.join(job["out_dir"], case["name"])
            config.save_pretrained(folder)
            with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
                result["saved_text"] = handle.read()
            result["reloaded"] = cls.from_pretrained(folder).to_dict()
        if case.get("ours_dir"):
            loaded = cls.from_pretrained(case["ours_dir"])
            result["from_ours"] = loaded.to_dict()
            result["from_ours_fields"] = {name: plain(getattr(loaded, name)) for name in case.get("fields", [])}
        results[case["name"]] = result
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
