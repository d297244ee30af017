// Reference tokenizations from transformers.js (the @lenml/tokenizers fork) for keel's conformance tests.
//
// usage: node reference.mjs MODEL INPUT.json OUTPUT.json
//   MODEL: llama2, llama3, llama3_1, qwen3, gemma3 (the @lenml/tokenizer-MODEL package's tokenizer files), or a
//          folder holding tokenizer.json and tokenizer_config.json
//   INPUT: {"strings": [...], "reps": N, "conversations": [{"messages": [...], "add_generation_prompt": bool}, ...]}
//   OUTPUT: {"encode": [{"ids": [...], "decoded": "..."}], "chat": [{"text": "..."} | {"error": "..."}]}
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { TokenizerLoader } from "@lenml/tokenizers";

const [model, input, output] = process.argv.slice(2);
let dir = model;
if (!fs.existsSync(path.join(dir, "tokenizer.json"))) {
  const here = path.dirname(fileURLToPath(import.meta.url));
  dir = path.join(here, "node_modules", "@lenml", `tokenizer-${model}`, "models");
}
const tokenizer = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
  tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")),
});
const req = JSON.parse(fs.readFileSync(input, "utf8"));
const out = { encode: [], chat: [], seconds: 0 };
// "reps" passes over the strings (for benchmarks): seconds is the fastest pass.
for (let r = 0; r < (req.reps ?? 1); r++) {
  const t0 = process.hrtime.bigint();
  const encoded = [];
  for (const s of req.strings ?? []) {
    encoded.push({ ids: tokenizer.encode(s) });
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r === 0 || secs < out.seconds) out.seconds = secs;
  out.encode = encoded;
}
for (const e of out.encode) {
  e.decoded = e.ids.length > 0 ? tokenizer.decode(e.ids) : "";
}
for (const c of req.conversations ?? []) {
  try {
    out.chat.push({
      text: tokenizer.apply_chat_template(c.messages, {
        tokenize: false,
        add_generation_prompt: c.add_generation_prompt ?? false,
      }),
    });
  } catch (err) {
    out.chat.push({ error: String(err.message ?? err) });
  }
}
fs.writeFileSync(output, JSON.stringify(out));
