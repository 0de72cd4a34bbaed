// The official `openai` npm package against a live asrd, used as its users use it.
// Usage: node openai_client.mjs BASE_URL AUDIO_FILE MODEL...   (BASE_URL ends in /v1)
// Prints one JSON object with what each call returned; tests/test_openai_api.py checks it.
import fs from "node:fs";
import path from "node:path";
import OpenAI, { toFile } from "openai";

const [baseURL, audioPath, ...models] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 120_000 });
const audio = () => fs.createReadStream(audioPath);

// A refused call as the SDK reports it: its error class, status and OpenAI error fields.
async function refusal(call) {
  try {
    await call();
    return { refused: false };
  } catch (error) {
    if (!(error instanceof OpenAI.APIError)) throw error;
    return {
      refused: true,
      class: error.constructor.name,
      status: error.status,
      code: error.code,
      param: error.param,
      type: error.type,
      message: error.message,
    };
  }
}

const result = { models: {}, byName: {} };

const listed = [];
for await (const model of client.models.list()) listed.push(model);
result.models.list = listed;
result.models.retrieved = await client.models.retrieve("openai/whisper-tiny.en");

// Every model name: a transcription, and the response headers it came with.
for (const model of models) {
  const { data, response } = await client.audio.transcriptions
    .create({ file: audio(), model })
    .withResponse();
  result.byName[model] = { text: data.text, diarization: response.headers.get("x-diarization") };
}

// Bytes in memory (toFile), verbose_json with word and segment timestamps.
const bytes = await toFile(fs.readFileSync(audioPath), path.basename(audioPath));
result.verbose = await client.audio.transcriptions.create({
  file: bytes,
  model: "whisper-1",
  response_format: "verbose_json",
  timestamp_granularities: ["word", "segment"],
});
result.srt = await client.audio.transcriptions.create({
  file: audio(),
  model: "gpt-4o-transcribe",
  response_format: "srt",
});
result.chunking = await client.audio.transcriptions.create({
  file: audio(),
  model: "gpt-4o-mini-transcribe",
  chunking_strategy: { type: "server_vad", threshold: 0.5 },
});

// Streaming, as the SDK parses it.
const events = [];
const stream = await client.audio.transcriptions.create({
  file: audio(),
  model: "gpt-4o-mini-transcribe",
  stream: true,
});
for await (const event of stream) events.push(event.type === "transcript.text.done" ? event : event.type);
result.stream = events;

// What asrd refuses, and how the SDK reports it.
result.refused = {
  unknownModel: await refusal(() =>
    client.audio.transcriptions.create({ file: audio(), model: "whisper-9" }),
  ),
  logprobs: await refusal(() =>
    client.audio.transcriptions.create({
      file: audio(),
      model: "gpt-4o-transcribe",
      include: ["logprobs"],
    }),
  ),
  diarizedJson: await refusal(() =>
    client.audio.transcriptions.create({
      file: audio(),
      model: "gpt-4o-transcribe-diarize",
      response_format: "diarized_json",
    }),
  ),
  translationOnEnglishOnly: await refusal(() =>
    client.audio.translations.create({ file: audio(), model: "whisper-1" }),
  ),
};

process.stdout.write(JSON.stringify(result));
