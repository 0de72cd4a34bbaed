// The live captions' audio tap: hands each block of microphone samples (mono, float32, at the
// AudioContext's rate) to the page, which sends them to the server.
class AsrdCapture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("asrd-capture", AsrdCapture);
