// Top-20 next-token log-probabilities from llama.cpp at every position of given token ids.
//
// usage: node topk.mjs MODEL.gguf INPUT.json OUTPUT.json
//   INPUT: {"sequences": [[ids...], ...], "top": 20, "threads": N, "texts": ["..."]}
//   OUTPUT: {"positions": [[[[id, logprob], ...top] per position] per sequence], "tokenized": [[ids...]], "seconds": s}
import fs from "node:fs";
import { getLlama } from "node-llama-cpp";

const [modelPath, input, output] = process.argv.slice(2);
const req = JSON.parse(fs.readFileSync(input, "utf8"));
const top = req.top ?? 20;
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath });
const out = { positions: [] };
const t0 = process.hrtime.bigint();
for (const seq of req.sequences) {
  const context = await model.createContext({
    contextSize: Math.max(64, seq.length + 8),
    batchSize: Math.max(64, seq.length + 8),
    threads: req.threads ?? 0,
    // Full-precision keys and values and no flash attention: the comparison is of the models, not of caches.
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
    flashAttention: false,
    swaFullCache: true,
  });
  const sequence = context.getSequence();
  const items = seq.map((id) => [id, { generateNext: { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } } }]);
  const res = await sequence.controlledEvaluate(items);
  const perPos = [];
  for (let i = 0; i < seq.length; i++) {
    const probs = res[i]?.next?.probabilities;
    const list = probs ? [...probs.entries()] : [];
    list.sort((a, b) => b[1] - a[1]);
    perPos.push(list.slice(0, top).map(([id, p]) => [id, Math.log(p)]));
  }
  out.positions.push(perPos);
  await context.dispose();
}
out.seconds = Number(process.hrtime.bigint() - t0) / 1e9;
// llama.cpp's own tokenization of texts (special tokens recognised), to check an exported vocabulary.
out.tokenized = (req.texts ?? []).map((t) => Array.from(model.tokenize(t, true)));
fs.writeFileSync(output, JSON.stringify(out));
await model.dispose();
await llama.dispose();
