// BabelRoom room page: join form, WebRTC session with the gateway, video grid, captions.
// Signaling: one HTTP POST carries the first offer; renegotiation, captions and room notices then
// travel over the "babelroom" data channel. Only this page offers, so offers never collide.
"use strict";

const SPEECH_RMS = 0.02;          // above this a level meter counts as sound
const SPEECH_END_HOLD_MS = 400;   // this much quiet after sound = the end of an utterance
const ICE_GATHER_TIMEOUT_MS = 3000;

const $ = (id) => document.getElementById(id);
const state = {
  config: null, pc: null, dc: null, me: null, room: "", hear: "", speak: "",
  roster: [], slots: new Map(), tiles: new Map(), negotiating: false, dirty: false, muted: false,
};
// Measurements for tests and for the curious (window.babelroom in the console).
const metrics = { speechEnds: [], translatedSoundAt: [], captionsShownAt: {}, translatedRms: 0, micRms: 0 };
window.babelroom = { state, metrics };

function roomFromPath() {
  const match = location.pathname.match(/^\/room\/([^/]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function loadConfig() {
  const response = await fetch("/api/config");
  state.config = await response.json();
  for (const select of [$("speak"), $("hear")]) {
    for (const { code, name } of state.config.languages) {
      select.add(new Option(`${name} (${code})`, code));
    }
  }
}

function prefill() {
  const q = new URLSearchParams(location.search);
  $("room").value = roomFromPath() || q.get("room") || "";
  $("name").value = q.get("name") || "";
  if (q.get("speak")) $("speak").value = q.get("speak");
  if (q.get("hear")) $("hear").value = q.get("hear") || $("speak").value;
  $("token").value = q.get("token") || "";
  const flag = (key, fallback) => (q.has(key) ? q.get(key) === "1" || q.get(key) === "true" : fallback);
  $("opt-original").checked = flag("original", false);
  $("opt-lipsync").checked = flag("lipsync", true);
  $("opt-consent").checked = flag("consent", true);
  $("opt-voice").checked = flag("voice", false);
  return Boolean(q.get("name") && q.get("speak") && q.get("hear") && $("room").value);
}

function showError(message) {
  $("join-error").textContent = message;
  $("join-error").hidden = false;
  $("lobby").hidden = false;
  $("meeting").hidden = true;
  $("join-button").disabled = false;
}

async function getMedia() {
  // Browser voice processing would clip and gate the voice the pipeline needs to hear: off.
  const audio = { echoCancellation: false, autoGainControl: false, noiseSuppression: false, channelCount: 1 };
  const video = { width: 320, height: 240, frameRate: 15 };
  try {
    return await navigator.mediaDevices.getUserMedia({ audio, video });
  } catch (error) {
    return await navigator.mediaDevices.getUserMedia({ audio });  // no camera: join with audio only
  }
}

function waitForIce(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, ICE_GATHER_TIMEOUT_MS);
  });
}

async function join(event) {
  if (event) event.preventDefault();
  $("join-button").disabled = true;
  $("join-error").hidden = true;
  state.room = $("room").value.trim();
  state.speak = $("speak").value;
  state.hear = $("hear").value;
  if (roomFromPath() !== state.room) history.replaceState(null, "", `/room/${encodeURIComponent(state.room)}${location.search}`);
  let media;
  try {
    media = await getMedia();
  } catch (error) {
    return showError(`Microphone unavailable: ${error.message}`);
  }
  const pc = new RTCPeerConnection({ iceServers: state.config.ice_servers || [] });
  state.pc = pc;
  state.dc = pc.createDataChannel("babelroom");
  state.dc.onmessage = (e) => onMessage(JSON.parse(e.data));
  const mic = media.getAudioTracks()[0];
  const micTransceiver = pc.addTransceiver(mic, { direction: "sendrecv", streams: [media] });
  const originalTransceiver = pc.addTransceiver("audio", { direction: "recvonly" });
  const camera = media.getVideoTracks()[0];
  if (camera) pc.addTransceiver(camera, { direction: "sendonly", streams: [media] });
  attachAudio($("translated-audio"), micTransceiver.receiver.track, true);
  attachAudio($("original-audio"), originalTransceiver.receiver.track, false);
  meterMic(media);
  pc.onconnectionstatechange = () => setConnection(pc.connectionState);
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc);
  const response = await fetch(`/api/rooms/${encodeURIComponent(state.room)}/join`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      name: $("name").value.trim(), speak: state.speak, hear: state.hear, token: $("token").value,
      options: { hear_original: $("opt-original").checked, lipsync: $("opt-lipsync").checked, consent: $("opt-consent").checked,
                 match_voice: $("opt-voice").checked },
      type: "offer", sdp: pc.localDescription.sdp,
    }),
  });
  const reply = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    pc.close();
    media.getTracks().forEach((t) => t.stop());
    return showError(reply.error || `Could not join (HTTP ${response.status})`);
  }
  state.me = { id: reply.id, name: reply.name, media };
  await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  enterMeeting(media);
}

function enterMeeting(media) {
  $("lobby").hidden = true;
  $("meeting").hidden = false;
  $("room-label").textContent = `Room ${state.room}`;
  $("caption-lang").textContent = `in ${languageName(state.hear)}`;
  const tile = ensureTile(state.me.id, `${state.me.name} (you)`);
  tile.video.srcObject = media;
  tile.video.muted = true;
}

function languageName(code) {
  const entry = (state.config.languages || []).find((l) => l.code === code);
  return entry ? entry.name : code;
}

function setConnection(text) {
  $("connection").textContent = text === "connected" ? "Connected" : text;
  $("connection").classList.toggle("live", text === "connected");
}

// -- audio ------------------------------------------------------------------------------------------
function attachAudio(element, track, translated) {
  element.srcObject = new MediaStream([track]);
  element.play().catch(() => {});
  if (!translated) return;
  meter(element.srcObject, (rms) => {
    metrics.translatedRms = rms;
    if (rms > SPEECH_RMS) metrics.translatedSoundAt.push(Date.now());
  });
}

function meterMic(media) {
  let lastLoud = 0;
  let speaking = false;
  meter(new MediaStream(media.getAudioTracks()), (rms, now) => {
    metrics.micRms = rms;
    const myTile = state.me && state.tiles.get(state.me.id);
    if (rms > SPEECH_RMS && !state.muted) { lastLoud = now; speaking = true; }
    else if (speaking && now - lastLoud > SPEECH_END_HOLD_MS) { speaking = false; metrics.speechEnds.push(lastLoud); }
    if (myTile) myTile.root.classList.toggle("speaking", speaking);
  });
}

let audioContext = null;
function meter(stream, onLevel) {
  audioContext = audioContext || new AudioContext();
  const analyser = audioContext.createAnalyser();
  analyser.fftSize = 1024;
  audioContext.createMediaStreamSource(stream).connect(analyser);
  const buffer = new Float32Array(analyser.fftSize);
  setInterval(() => {
    analyser.getFloatTimeDomainData(buffer);
    let sum = 0;
    for (const v of buffer) sum += v * v;
    onLevel(Math.sqrt(sum / buffer.length), Date.now());
  }, 20);
}

// -- data channel messages --------------------------------------------------------------------------
function onMessage(message) {
  const handlers = { roster: onRoster, floor: onFloor, caption: onCaption, playout: onPlayout,
    late: onLate, answer: onAnswer, error: (m) => console.warn("gateway:", m.error), welcome: () => {} };
  (handlers[message.type] || (() => {}))(message);
}

function onFloor(message) {
  const pill = $("floor");
  pill.hidden = !message.holder;
  const next = message.queue.length ? ` · next: ${message.queue.join(", ")}` : "";
  pill.textContent = message.holder ? `${message.holder_name} has the floor${next}` : "";
  pill.dataset.holder = message.holder || "";
  const mine = message.holder === state.me?.id || message.queue_ids.includes(state.me?.id);
  $("floor-button").dataset.action = mine ? "release" : "request";
  $("floor-button").textContent = message.holder === state.me?.id ? "Give up the floor"
    : mine ? "Leave the queue" : "Ask for the floor";
  for (const [id, tile] of state.tiles) tile.root.classList.toggle("speaking", id === message.holder);
}

function onPlayout(message) {
  $("playing").hidden = !message.playing;
  $("playing").textContent = message.playing ? `Translation playing · ${message.speaker}` : "";
}

function onLate(message) {
  for (const el of document.querySelectorAll(`[data-caption-id="${CSS.escape(message.id)}"]`)) el.classList.add("captions-only");
}

function onCaption(c) {
  const list = $("captions");
  const key = `${c.id}|${c.lang}`;
  let el = list.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (!el) {
    // an interim caption in my language is replaced by the final one for the same segment
    el = document.createElement("li");
    el.className = "caption";
    el.dataset.key = key;
    el.innerHTML = '<div class="who"></div><div class="text"></div><div class="original"></div><div class="note"></div>';
    list.append(el);
  }
  el.setAttribute("data-caption", "");
  el.dataset.captionId = c.id;
  el.dataset.lang = c.lang;
  el.dataset.speaker = c.speaker;
  el.dataset.final = String(Boolean(c.final));
  el.querySelector(".who").textContent = c.speaker;
  el.querySelector(".text").textContent = c.final ? c.text : "";
  const showOriginal = c.original && (c.source_lang !== c.lang || !c.final);
  el.querySelector(".original").textContent = showOriginal ? `${c.source_lang}: ${c.original}` : "";
  el.querySelector(".note").textContent = c.note || "";
  if (c.final && !metrics.captionsShownAt[key]) metrics.captionsShownAt[key] = Date.now();
  list.scrollTop = list.scrollHeight;
}

// -- video grid and renegotiation -------------------------------------------------------------------
function ensureTile(id, label) {
  let tile = state.tiles.get(id);
  if (!tile) {
    const root = document.createElement("div");
    root.className = "tile";
    root.dataset.participant = id;
    root.innerHTML = '<div class="avatar"></div><video autoplay playsinline muted></video><div class="label"></div>';
    $("grid").append(root);
    tile = { root, video: root.querySelector("video") };
    state.tiles.set(id, tile);
  }
  tile.root.querySelector(".label").textContent = label;
  tile.root.querySelector(".avatar").textContent = label.slice(0, 1).toUpperCase();
  return tile;
}

function onRoster(message) {
  state.roster = message.participants;
  const present = new Set(state.roster.map((p) => p.id));
  for (const [id, tile] of state.tiles) {
    if (!present.has(id)) { tile.root.remove(); state.tiles.delete(id); }
  }
  for (const p of state.roster) {
    if (p.id === state.me?.id) continue;
    const lang = p.speak === p.hear ? p.speak : `${p.speak}→${p.hear}`;
    ensureTile(p.id, `${p.name} · ${lang}${p.muted ? " · muted" : ""}`);
  }
  renegotiate();
}

// One receive-only video section per other participant with a camera; a freed section is reused.
function assignSlots() {
  const wanted = state.roster.filter((p) => p.id !== state.me?.id && p.video).map((p) => p.id);
  let changed = false;
  for (const [transceiver, owner] of state.slots) {
    if (owner && !wanted.includes(owner)) { state.slots.set(transceiver, ""); changed = true; }
  }
  const assigned = new Set(state.slots.values());
  for (const id of wanted.filter((w) => !assigned.has(w))) {
    let free = [...state.slots].find(([, owner]) => !owner)?.[0];
    if (!free) free = state.pc.addTransceiver("video", { direction: "recvonly" });
    state.slots.set(free, id);
    changed = true;
  }
  return changed;
}

async function renegotiate() {
  if (!state.pc || !state.dc) return;
  if (state.negotiating) { state.dirty = true; return; }
  if (!assignSlots()) return;
  if (state.dc.readyState !== "open") { state.dc.addEventListener("open", renegotiate, { once: true }); return; }
  state.negotiating = true;
  await state.pc.setLocalDescription(await state.pc.createOffer());
  const slots = {};
  for (const [transceiver, owner] of state.slots) slots[transceiver.mid] = owner;
  state.dc.send(JSON.stringify({ type: "offer", sdp: state.pc.localDescription.sdp, slots }));
}

async function onAnswer(message) {
  await state.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
  for (const [transceiver, owner] of state.slots) {
    if (!owner) continue;
    const tile = state.tiles.get(owner);
    if (tile && tile.video.srcObject?.getVideoTracks()[0] !== transceiver.receiver.track) {
      tile.video.srcObject = new MediaStream([transceiver.receiver.track]);
      tile.video.play().catch(() => {});
    }
  }
  state.negotiating = false;
  if (state.dirty) { state.dirty = false; renegotiate(); }
}

// -- controls ---------------------------------------------------------------------------------------
function toggleMute() {
  state.muted = !state.muted;
  state.me.media.getAudioTracks().forEach((t) => { t.enabled = !state.muted; });
  $("mute").textContent = state.muted ? "Unmute" : "Mute";
  $("mute").setAttribute("aria-pressed", String(state.muted));
  if (state.dc?.readyState === "open") state.dc.send(JSON.stringify({ type: "mute", muted: state.muted }));
}

function floorButton() {
  const action = $("floor-button").dataset.action;
  if (state.dc?.readyState === "open") state.dc.send(JSON.stringify({ type: "floor", action }));
}

async function leave() {
  if (state.me) {
    await fetch(`/api/sessions/${state.me.id}/leave`, { method: "POST" }).catch(() => {});
    state.me.media.getTracks().forEach((t) => t.stop());
  }
  if (state.pc) state.pc.close();
  location.href = `/room/${encodeURIComponent(state.room)}`;
}

async function main() {
  await loadConfig();
  $("speak").addEventListener("change", () => { $("hear").value = $("speak").value; });
  $("join-form").addEventListener("submit", join);
  $("mute").addEventListener("click", toggleMute);
  $("floor-button").addEventListener("click", floorButton);
  $("leave").addEventListener("click", leave);
  $("show-original").addEventListener("change", (e) => $("captions").classList.toggle("hide-original", !e.target.checked));
  if (prefill()) join().catch((error) => showError(error.message));
}

main();
