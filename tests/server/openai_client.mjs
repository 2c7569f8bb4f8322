// The official `openai` npm client against a live `kvstash serve`: model list, a chat
// completion, a streamed chat completion (with usage and cached_tokens), a text completion and
// a rejected API key. Run by ctest (server.OpenAiNodeClient). Environment:
//   KVSTASH_BINARY   the kvstash binary        KVSTASH_MODELS  the shared models directory
//   KVSTASH_NPM_DIR  npm prefix holding node_modules/openai (scripts/test.sh installs it)
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';

function die(msg) {
  console.error(`openai_client: ${msg}`);
  process.exit(1);
}

const { KVSTASH_BINARY: bin, KVSTASH_MODELS: models, KVSTASH_NPM_DIR: npmDir } = process.env;
if (!bin || !models || !npmDir) die('KVSTASH_BINARY, KVSTASH_MODELS and KVSTASH_NPM_DIR must be set');
let OpenAI;
try {
  const mod = createRequire(path.resolve(npmDir, 'package.json'))('openai');
  OpenAI = mod.OpenAI ?? mod.default ?? mod;
} catch (e) {
  die(`the openai npm package is not installed under ${npmDir} (scripts/test.sh runs: npm install --prefix ${npmDir} openai@4): ${e.message}`);
}

const server = spawn(bin, ['serve', '-m', path.join(models, 'stories260K.gguf'), '--port', '0', '-np', '2', '-c', '1024',
                           '-a', 'stories260K', '--api-key', 'sk-kvstash-test'], { stdio: ['ignore', 'pipe', 'pipe'] });
let log = '';
server.stderr.on('data', (d) => { log += d; });
const exited = new Promise((resolve) => server.on('exit', (code, signal) => resolve({ code, signal })));
const port = await new Promise((resolve, reject) => {
  let out = '';
  const timer = setTimeout(() => reject(new Error(`the server did not start:\n${out}${log}`)), 20000);
  server.stdout.on('data', (d) => {
    out += d;
    const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out);
    if (m) { clearTimeout(timer); resolve(Number(m[1])); }
  });
  server.on('exit', () => reject(new Error(`the server exited:\n${out}${log}`)));
});
const base = `http://127.0.0.1:${port}`;
for (let i = 0; ; ++i) {
  const r = await fetch(`${base}/health`).catch(() => null);
  if (r && r.status === 200) break;
  if (i > 400) die(`the server never became healthy:\n${log}`);
  await new Promise((r) => setTimeout(r, 25));
}

try {
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'sk-kvstash-test', maxRetries: 0, timeout: 30000 });
  const list = await client.models.list();
  assert.equal(list.data[0].id, 'stories260K');

  const messages = [{ role: 'system', content: 'You tell short stories.' }, { role: 'user', content: 'Tell me about a dog.' }];
  const chat = await client.chat.completions.create({ model: 'stories260K', messages, max_tokens: 16, temperature: 0 });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices.length, 1);
  assert.equal(chat.choices[0].message.role, 'assistant');
  assert.ok(chat.choices[0].message.content.length > 0, 'empty chat content');
  assert.equal(chat.choices[0].finish_reason, 'length');
  assert.equal(chat.usage.completion_tokens, 16);
  assert.equal(chat.usage.total_tokens, chat.usage.prompt_tokens + 16);
  assert.equal(chat.usage.prompt_tokens_details.cached_tokens, 0);

  const stream = await client.chat.completions.create({
    model: 'stories260K', messages, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let finish = null;
  let chunks = 0;
  for await (const chunk of stream) {
    ++chunks;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.choices.length) {
      text += chunk.choices[0].delta?.content ?? '';
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(chunks > 2, `only ${chunks} chunks`);
  assert.equal(text, chat.choices[0].message.content, 'the stream differs from the plain completion');
  assert.equal(finish, 'length');
  assert.ok(usage, 'no usage chunk');
  assert.equal(usage.completion_tokens, 16);
  assert.equal(usage.prompt_tokens_details.cached_tokens, chat.usage.prompt_tokens - 1, 'the repeated prompt was not served from the cache');

  const done = await client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 });
  assert.equal(done.object, 'text_completion');
  assert.ok(done.choices[0].text.startsWith(', there was'), done.choices[0].text);

  const intruder = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(intruder.chat.completions.create({ model: 'stories260K', messages, max_tokens: 1 }),
                       (e) => e.status === 401 && e instanceof OpenAI.AuthenticationError);
  console.log(`openai_client: ok: chat "${text.slice(0, 40)}...", ${chunks} chunks`);
} catch (e) {
  server.kill('SIGKILL');
  console.error(log);
  die(e.stack ?? String(e));
}
server.kill('SIGTERM');
const { code, signal } = await exited;
if (code !== 0) die(`the server exited with ${code ?? signal} after SIGTERM:\n${log}`);
