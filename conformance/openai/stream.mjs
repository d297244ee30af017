// The official openai client against keel serve: a streamed chat completion with keel's extension (capping on,
// a projection asked for), the same request unstreamed, and a wrong key.
//
// usage: node stream.mjs BASE_URL API_KEY MODEL
// prints one JSON object: {"text", "chunks", "keel_tokens", "projections", "cap_moves", "non_stream_text",
// "wrong_key_status", "too_long": {"status", "code", "stream_status", "stream_code"}}
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
console.log(JSON.stringify(out));
