// The official openai client against keel serve: a streamed chat completion with keel's extension (capping on,
// a projection asked for), the same request unstreamed, and a wrong key.
//
// usage: node stream.mjs BASE_URL API_KEY MODEL
// prints one JSON object: {"text", "chunks", "keel_tokens", "projections", "cap_moves", "non_stream_text",
// "wrong_key_status"}
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
console.log(JSON.stringify(out));
