// Greedy decode speed of llama.cpp (node-llama-cpp) on a GGUF: the prompt is evaluated first and not timed.
//
// usage: node decode.mjs MODEL.gguf PROMPT_IDS(comma-separated) TOKENS THREADS
// prints: tokens_per_s=X
import { getLlama } from "node-llama-cpp";

const [modelPath, promptArg, tokensArg, threadsArg] = process.argv.slice(2);
const prompt = promptArg.split(",").map(Number);
const n = Number(tokensArg);
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({
  contextSize: prompt.length + n + 16,
  threads: Number(threadsArg) || 0,
  // The same computation as keel's: f32 keys and values, no flash attention.
  experimentalKvCacheKeyType: "F32",
  experimentalKvCacheValueType: "F32",
  flashAttention: false,
});
const sequence = context.getSequence();
let count = 0;
let t0 = 0n;
for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
  if (count === 0) t0 = process.hrtime.bigint();
  count++;
  if (count > n) break;
}
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(`tokens_per_s=${n / secs}`);
await context.dispose();
await model.dispose();
await llama.dispose();
