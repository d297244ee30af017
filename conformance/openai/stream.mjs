// The official openai client against keel serve: a streamed chat completion with keel's extension (capping on,
// a projection asked for), the same request unstreamed, and a wrong key.
//
// usage: node stream.mjs BASE_URL API_KEY MODEL
// prints one JSON object: {"text", "chunks", "keel_tokens", "projections", "cap_moves", "non_stream_text",
// "wrong_key_status", "too_long": {"status", "code", "stream_status", "stream_code"}, "parts_text",
// "usage": {"chunks_after_finish", "prompt_tokens", "completion_tokens", "total_tokens"},
// "logprobs": {"stream": [...], "whole": [...], "completions": {...}}, "tools": {"status", "code", "message"}}
import OpenAI from "openai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const request = {
  model,
  messages: [{ role: "user", content: "Who are you?" }],
  max_tokens: 16,
  temperature: 0,
  keel: { cap: "on", project: [2] },
};
const out = { text: "", chunks: 0, keel_tokens: 0, projections: 0, cap_moves: 0 };
const stream = await client.chat.completions.create({ ...request, stream: true });
for await (const chunk of stream) {
  out.chunks++;
  out.text += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.keel) {
    out.keel_tokens++;
    if (chunk.keel.projections && "2" in chunk.keel.projections) out.projections++;
    if (chunk.keel.cap_moves && Object.keys(chunk.keel.cap_moves).length > 0) out.cap_moves++;
  }
}
const whole = await client.chat.completions.create(request);
out.non_stream_text = whole.choices[0].message.content;
try {
  await new OpenAI({ baseURL, apiKey: "wrong-key-0123456789", maxRetries: 0 }).chat.completions.create(request);
  out.wrong_key_status = 200;
} catch (err) {
  out.wrong_key_status = err.status ?? -1;
}
// A request past the model's window: 400 context_length_exceeded before any token, streamed or not.
const tooLong = { ...request, messages: [{ role: "user", content: "the sea ".repeat(2000) }], max_tokens: 64 };
out.too_long = {};
for (const [key, stream] of [["", false], ["stream_", true]]) {
  try {
    const res = await client.chat.completions.create({ ...tooLong, stream });
    if (stream) for await (const _ of res);
    out.too_long[key + "status"] = 200;
  } catch (err) {
    out.too_long[key + "status"] = err.status ?? -1;
    out.too_long[key + "code"] = err.code ?? err.error?.code ?? "";
  }
}
// The message as an array of text parts, under the developer role as well: the same prompt as the string.
const parts = await client.chat.completions.create({
  ...request,
  messages: [{ role: "developer", content: [{ type: "text", text: "Be brief." }] }, { role: "user", content: [{ type: "text", text: "Who are " }, { type: "text", text: "you?" }] }],
});
out.parts_text = parts.choices[0].message.content;
const plain = await client.chat.completions.create({
  ...request,
  messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Who are you?" }],
});
out.plain_text = plain.choices[0].message.content;
// stream_options.include_usage: one last chunk with no choices carries the usage.
out.usage = { chunks_after_finish: 0 };
let finished = false;
for await (const chunk of await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } })) {
  if (finished) out.usage.chunks_after_finish++;
  if (chunk.choices[0]?.finish_reason) finished = true;
  if (chunk.usage) Object.assign(out.usage, chunk.usage, { choices: chunk.choices.length });
}
// logprobs and top_logprobs, streamed and whole, on chat; logprobs N on completions.
const scored = { model, messages: [{ role: "user", content: "Who are you?" }], max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3 };
out.logprobs = { stream: [] };
for await (const chunk of await client.chat.completions.create({ ...scored, stream: true })) {
  out.logprobs.stream.push(...(chunk.choices[0]?.logprobs?.content ?? []));
}
const scoredWhole = await client.chat.completions.create(scored);
out.logprobs.whole = scoredWhole.choices[0].logprobs.content;
out.logprobs.whole_text = scoredWhole.choices[0].message.content;
const comp = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 6, temperature: 0, logprobs: 2 });
out.logprobs.completions = comp.choices[0].logprobs;
out.logprobs.completions_text = comp.choices[0].text;
// A field keel does not apply is refused, naming it.
try {
  await client.chat.completions.create({ ...request, tools: [{ type: "function", function: { name: "f", parameters: {} } }] });
  out.tools = { status: 200 };
} catch (err) {
  out.tools = { status: err.status ?? -1, code: err.code ?? "", message: err.message };
}
console.log(JSON.stringify(out));
