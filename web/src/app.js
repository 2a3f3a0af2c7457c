// The voxbus page: join a room with the agent, talk, see both sides' captions and each turn's
// latency (end of your speech to the agent's first audio). State the tests read is kept in the
// DOM too (data-* attributes), so a headless browser can be asked what the page saw.
import { Room, RoomEvent, Track } from "livekit-client";

const $ = (id) => document.getElementById(id);
const SPEECH_RMS = 0.02; // a microphone frame louder than this is speech
const AGENT_RMS = 0.01; // agent audio louder than this is the agent talking
const state = {
  room: null, lastSpeech: 0, lastOnset: 0, agentTalking: false, turns: 0, agentMax: 0,
};

function setStatus(text) {
  $("status").textContent = text;
}

function meter(stream, onLevel) {
  const ctx = new AudioContext();
  const src = ctx.createMediaStreamSource(stream);
  const an = ctx.createAnalyser();
  an.fftSize = 1024;
  src.connect(an);
  const buf = new Float32Array(an.fftSize);
  const tick = () => {
    an.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    onLevel(Math.sqrt(sum / buf.length));
    if (state.room) requestAnimationFrame(tick);
  };
  ctx.resume();
  tick();
  return ctx;
}

function caption(side, segment, text, final) {
  // one element per segment: a partial is replaced in place, the final fixes it
  const id = `cap-${segment}`;
  let el = document.getElementById(id);
  if (!el) {
    el = document.createElement("div");
    el.id = id;
    el.className = `caption ${side}`;
    $("captions").appendChild(el);
  }
  el.textContent = (side === "user" ? "You: " : "Agent: ") + text;
  el.dataset.final = final ? "true" : "false";
  $("captions").scrollTop = $("captions").scrollHeight;
}

function onAgentLevel(level) {
  state.agentMax = Math.max(state.agentMax, level);
  $("agent-level").value = level;
  document.body.dataset.agentMax = state.agentMax.toFixed(4);
  if (level > AGENT_RMS && !state.agentTalking) {
    state.agentTalking = true;
    // a turn: the agent's first audio after you spoke (not a pause inside its own answer)
    const spokeSince = state.lastSpeech > state.lastOnset;
    state.lastOnset = performance.now();
    if (state.lastSpeech && spokeSince) {
      state.turns += 1;
      const ms = Math.round(performance.now() - state.lastSpeech);
      const li = document.createElement("li");
      li.textContent = `turn ${state.turns}: ${ms} ms`;
      li.dataset.ms = String(ms);
      $("latency").appendChild(li);
    }
  } else if (level <= AGENT_RMS / 2) {
    state.agentTalking = false;
  }
}

// the agents published in the region (the server asks the bus); "default" lets the bridge choose
async function listAgents(wanted) {
  const res = await fetch("/agents");
  const { agents = [] } = res.ok ? await res.json() : {};
  document.body.dataset.agents = agents.join(",");
  // one asked for in the URL but not published: offered anyway, and the bridge says why not
  if (wanted && !agents.includes(wanted)) agents.push(wanted);
  for (const name of agents) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = name;
    $("agent").appendChild(opt);
  }
  if (wanted) $("agent").value = wanted;
}

async function join() {
  const room = $("room").value || "web";
  const agent = $("agent").value;
  const res = await fetch(
    `/token?room=${encodeURIComponent(room)}&agent=${encodeURIComponent(agent)}`);
  const grant = await res.json();
  if (!res.ok) {
    setStatus(`cannot join: ${grant.error}`);
    return;
  }
  const lk = new Room();
  state.room = lk;
  lk.on(RoomEvent.TrackSubscribed, (track) => {
    if (track.kind !== Track.Kind.Audio) return;
    const el = track.attach();
    el.id = "agent-audio";
    document.body.appendChild(el);
    meter(new MediaStream([track.mediaStreamTrack]), onAgentLevel);
  });
  lk.on(RoomEvent.Disconnected, () => setStatus("left"));
  lk.registerTextStreamHandler("lk.transcription", async (reader, from) => {
    const attrs = reader.info.attributes || {};
    const side = from.identity === lk.localParticipant.identity ? "user" : "agent";
    const segment = attrs["lk.segment_id"] || reader.info.id;
    let text = "";
    for await (const chunk of reader) {
      text += chunk;
      caption(side, segment, text, false);
    }
    caption(side, segment, text, true);
  });
  await lk.connect(grant.url, grant.token);
  await lk.localParticipant.setMicrophoneEnabled(true);
  const mic = lk.localParticipant.getTrackPublication(Track.Source.Microphone);
  meter(new MediaStream([mic.track.mediaStreamTrack]), (level) => {
    $("mic-level").value = level;
    if (level > SPEECH_RMS) state.lastSpeech = performance.now();
  });
  setStatus(`in room ${room}` + (agent ? ` with ${agent}` : ""));
  document.body.dataset.joined = "true";
  $("join").disabled = true;
  $("agent").disabled = true;
  $("leave").disabled = false;
}

async function leave() {
  const lk = state.room;
  state.room = null;
  if (lk) await lk.disconnect();
  $("join").disabled = false;
  $("agent").disabled = false;
  $("leave").disabled = true;
}

window.addEventListener("DOMContentLoaded", () => {
  $("join").addEventListener("click", () => join().catch((e) => setStatus(`error: ${e}`)));
  $("leave").addEventListener("click", () => leave());
  const params = new URLSearchParams(location.search);
  if (params.get("room")) $("room").value = params.get("room");
  const listed = listAgents(params.get("agent")).catch(() => {});
  if (params.get("autojoin")) {
    listed.then(() => join()).catch((e) => setStatus(`error: ${e}`));
  }
});
