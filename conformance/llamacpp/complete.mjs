// Greedy text continuation and chat-template rendering by llama.cpp, through node-llama-cpp.
//
// usage: node complete.mjs MODEL.gguf INPUT.json OUTPUT.json
//   INPUT: {"prompts": ["text", ...], "maxTokens": N, "chats": [[{"role", "content"}, ...], ...]}
//   (a chat ends with a user turn: node-llama-cpp renders it with the generation prompt)
//   OUTPUT: {"completions": ["text", ...], "chatWrapper": "name", "chatTemplate": "..." | null,
//            "chats": ["rendered text", ...]}
import fs from "node:fs";
import { getLlama, resolveChatWrapper, JinjaTemplateChatWrapper } from "node-llama-cpp";

const [modelPath, input, output] = process.argv.slice(2);
const req = JSON.parse(fs.readFileSync(input, "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath });
const out = { completions: [], chats: [] };
for (const prompt of req.prompts ?? []) {
  // Full-precision keys and values, no flash attention: greedy text compares the models, not the caches.
  const context = await model.createContext({
    contextSize: 512, threads: 1, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32", flashAttention: false,
  });
  // The prompt as llama.cpp's llama_tokenize(add_special) reads it: BOS, then the text with SentencePiece's dummy
  // prefix. (Given a string, node-llama-cpp's LlamaCompletion drops that prefix when it prepends BOS, and at
  // temperature 0 its loop leaves llama2.c's recorded greedy story after 40 tokens; the sequence's own greedy
  // evaluation is llama.cpp's sampler alone.)
  const input = [...(model.tokens.shouldPrependBosToken ? [model.tokens.bos] : []), ...model.tokenize(prompt, false)];
  const generated = [];
  for await (const token of context.getSequence().evaluate(input, { temperature: 0, yieldEogToken: true })) {
    if (model.isEogToken(token)) break;
    generated.push(token);
    if (generated.length >= (req.maxTokens ?? 64)) break;
  }
  // The continuation of the text: what the generated tokens add to the prompt's detokenized text.
  const before = model.detokenize(input);
  out.completions.push(model.detokenize([...input, ...generated]).slice(before.length));
  await context.dispose();
}
// The template a chat session on this file would use: llama.cpp's metadata as node-llama-cpp resolves it.
out.chatTemplate = model.fileInfo.metadata?.tokenizer?.chat_template ?? null;
const wrapper = resolveChatWrapper(model, { fallbackToOtherWrappersOnJinjaError: false });
out.chatWrapper = wrapper?.wrapperName ?? null;
if (out.chatTemplate != null) {
  const jinja = new JinjaTemplateChatWrapper({ template: out.chatTemplate, tokenizer: model.tokenizer });
  for (const chat of req.chats ?? []) {
    const history = chat.map((m) => m.role === "assistant" ? { type: "model", response: [m.content] } : { type: m.role, text: m.content });
    const { contextText } = jinja.generateContextState({ chatHistory: history });
    // Special tokens as their text (LlamaText prints placeholders): tokenize, then detokenize with specials.
    out.chats.push(model.detokenize(contextText.tokenize(model.tokenizer), true));
  }
}
fs.writeFileSync(output, JSON.stringify(out));
await model.dispose();
await llama.dispose();
