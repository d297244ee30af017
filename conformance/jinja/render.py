"""Reference chat-template renders for keel's tests: Python's Jinja2 set up as Hugging Face transformers sets it
up for apply_chat_template (a sandboxed environment with trim_blocks and lstrip_blocks, the loop-controls
extension, tojson as json.dumps without ASCII escaping, raise_exception and strftime_now), with the tokenizer's
special tokens (bos_token, eos_token, ...) as variables, as transformers passes them.

usage: python3 render.py TOKENIZER_DIR INPUT.json OUTPUT.json
  INPUT:  {"conversations": [{"messages": [...], "add_generation_prompt": bool}, ...]}
  OUTPUT: {"chat": [{"text": "..."} | {"error": "..."}, ...]}
"""
import json
import os
import sys
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.sandbox


class TemplateRaised(Exception):
    pass


def environment():
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise TemplateRaised(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def special_tokens(config):
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        v = config.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if v is not None:
            out[key] = v
    return out


def main():
    folder, inp, outp = sys.argv[1:4]
    with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    source = config.get("chat_template")
    if isinstance(source, list):
        source = {t["name"]: t["template"] for t in source}.get("default")
    with open(inp, encoding="utf-8") as f:
        req = json.load(f)
    chat = []
    if source is None:
        chat = [{"error": "no chat_template"} for _ in req.get("conversations", [])]
    else:
        template = environment().from_string(source)
        for conv in req.get("conversations", []):
            try:
                text = template.render(messages=conv["messages"], add_generation_prompt=conv.get("add_generation_prompt", False),
                                       **special_tokens(config))
                chat.append({"text": text})
            except Exception as e:  # a template's own raise_exception, or a render error
                chat.append({"error": str(e)})
    with open(outp, "w", encoding="utf-8") as f:
        json.dump({"chat": chat}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
