// BabelRoom room page: the join form, the meeting on Janus (janus.js), captions and controls.
//
// Joining: POST /api/rooms/{room}/join gives this page a session id and a ticket. With them it opens
// - the events socket (captions, roster, floor, playout notices; mute/camera/floor/leave back), and
// - janus.js, whose WebSocket goes through the gateway's filtering proxy to Janus: the page publishes
//   its camera and microphone as its own feed, and subscribes, straight from Janus, to the others'
//   video, to their voice when it shares their language (or asked to hear originals quietly), and to
//   the feed of translated speech in its own language.
// A lost connection shows a banner and rejoins by itself with the same name and languages; a participation the
// gateway ended for good (a host removed this person or ended the meeting, or the join link expired) does not.
// A host (a link with a host token) also sees "Remove" on each participant and "End meeting for everyone".
// Many media nodes: the join answer names the node that holds the room (a 421 names it when this node does not),
// and the page talks to that node only. When it loses its node, it rejoins through the cluster's address
// (BABELROOM_CLUSTER_URL), the address it was first opened at, or any other node it was told of, and follows
// their answer to the room's new node, keeping its camera and microphone.
"use strict";

const SPEECH_RMS = 0.02;           // above this a level meter counts as sound
const SPEECH_END_HOLD_MS = 400;    // this much quiet after sound = the end of an utterance
const ORIGINAL_UNDER_GAIN = 0.2;   // "hear the original quietly": the others' voices under the translation
// A node counts as dead 5 s after its last report: tries each second until then, so a room is placed again soon.
const REJOIN_DELAYS_MS = [500, 1000, 1000, 1000, 1000, 2000, 2000, 4000, 8000];
const MAX_NODE_HOPS = 3;           // 421 answers followed in one join
const ICE_DISCONNECTED_GRACE_MS = 5000;
const PLUGIN = "janus.plugin.videoroom";
const STORED = "babelroom.profile";
// Close codes of the events socket after which this page does not join again by itself (gateway/rooms/room.py).
const FINAL_EXITS = { 4001: "removed", 4002: "ended", 4003: "expired" };
const EXIT_WAIT_MS = 1000;          // when the media socket drops, the events socket may be about to say why

const $ = (id) => document.getElementById(id);
const state = {
  config: null, me: null, profile: null, events: null, janus: null, publisher: null,
  subs: new Map(),            // feed id -> {handle, key}
  feedVideo: null,            // my language feed's video: a speaker's face while their translation plays
  translatedPc: null,         // the peer connection that carries my language's translated speech
  lostReasons: [],            // why the connection was lost, each time (for the curious, and tests)
  roster: [], feeds: {}, tiles: new Map(), media: null,
  muted: false, cameraOn: true, connected: false, heard: false, janusReady: false, iceTimer: 0, left: false, rejoining: false, attempts: 0,
  role: "participant",       // "host" may remove participants and end the meeting
  exit: null,                // {reason, message} once the gateway ended this participation for good
  node: "",                   // the node this session talks to ("": this page's own address)
  entry: "", clusterUrl: "", peers: [],  // where to rejoin through when that node is lost
};
// Measurements for tests and for the curious (window.babelroom in the console).
const metrics = { micOpenedAt: 0, liveAt: 0, heardAt: 0, connectedAt: 0, mediaUpAt: [], speechStarts: [], speechEnds: [], translatedSoundAt: [], captionsShownAt: {}, interimShownAt: {}, translatedRms: 0, micRms: 0, rejoins: 0 };
window.babelroom = { state, metrics };

// -- the join form -----------------------------------------------------------------------------------
function roomFromPath() {
  const match = location.pathname.match(/^\/room\/([^/]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function loadConfig() {
  const response = await fetch("/api/config");
  state.config = await response.json();
  for (const select of [$("speak"), $("hear")]) {
    for (const { code, name } of state.config.languages) select.add(new Option(`${name} (${code})`, code));
  }
  const lipsync = Boolean(state.config.features?.lipsync);
  for (const el of document.querySelectorAll("[data-unavailable]")) el.hidden = lipsync;
  $("opt-lipsync").disabled = !lipsync;
  for (const radio of document.querySelectorAll('input[name="face"]')) { radio.disabled = !lipsync; radio.required = lipsync; }
  $("face-consent").classList.toggle("disabled", !lipsync);
  $("lipsync-option").classList.toggle("disabled", !lipsync);
}

function supported(code) {
  return state.config.languages.some((l) => l.code === code);
}

// Fill the form from the link, else from the last visit. Returns an error for a link that cannot join.
function prefill() {
  const q = new URLSearchParams(location.search);
  const stored = JSON.parse(localStorage.getItem(STORED) || "{}");
  $("room").value = roomFromPath() || q.get("room") || "";
  $("name").value = q.get("name") || stored.name || "";
  $("token").value = q.get("token") || "";
  const problems = [];
  for (const field of ["speak", "hear"]) {
    const given = q.get(field);
    if (given !== null && !supported(given)) problems.push(`"${given}" (${field}=${given})`);
    const value = given !== null && supported(given) ? given : stored[field];
    if (value && supported(value)) $(field).value = value;
  }
  if (!q.get("hear") && !stored.hear) $("hear").value = $("speak").value;
  const flag = (key, fallback) => (q.has(key) ? ["1", "true", "yes"].includes(q.get(key)) : fallback);
  const options = stored.options || {};
  $("opt-original").checked = flag("original", Boolean(options.hear_original));
  $("opt-voice").checked = flag("voice", Boolean(options.match_voice));
  $("opt-lipsync").checked = !$("opt-lipsync").disabled && flag("lipsync", Boolean(options.lipsync));
  if (q.has("face")) $(flag("face", false) ? "face-yes" : "face-no").checked = true;
  if (problems.length) {
    const codes = state.config.languages.map((l) => l.code).join(", ");
    return { error: `This link names a language this server does not have: ${problems.join(", ")}. It supports ${codes}.` };
  }
  return { ready: Boolean($("name").value && q.get("speak") && q.get("hear") && $("room").value) };
}

function readProfile() {
  const lipsyncOn = Boolean(state.config.features?.lipsync);
  return {
    room: $("room").value.trim(),
    name: $("name").value.trim(),
    speak: $("speak").value,
    hear: $("hear").value,
    token: $("token").value,
    options: {
      hear_original: $("opt-original").checked,
      match_voice: $("opt-voice").checked,
      lipsync: lipsyncOn && $("opt-lipsync").checked,
      face_consent: lipsyncOn && $("face-yes").checked,
    },
  };
}

function remember(profile) {
  const { name, speak, hear, options } = profile;
  localStorage.setItem(STORED, JSON.stringify({ name, speak, hear, options }));
}

function showError(message) {
  $("join-error").textContent = message;
  $("join-error").hidden = false;
  $("lobby").hidden = false;
  $("meeting").hidden = true;
  $("join-button").disabled = false;
}

function banner(text, kind = "warning") {
  $("banner").textContent = text || "";
  $("banner").dataset.kind = kind;
  $("banner").hidden = !text;
}

// -- joining, losing the connection, rejoining ---------------------------------------------------------
async function onSubmit(event) {
  event.preventDefault();
  if (!$("join-form").reportValidity()) return;
  await start(readProfile()).catch(showFailure);
}

// Something this page did not expect: the details go to the console, the person gets words they can act on.
function showFailure(error) {
  console.warn("join failed:", error);
  showError("Joining did not work: the BabelRoom server could not be reached, or it answered something this page " +
    "did not understand. Check your network connection and press Join again.");
}

async function start(profile) {
  $("join-button").disabled = true;
  $("join-error").hidden = true;
  $("lobby-notice").hidden = true;
  state.left = false;
  state.exit = null;
  delete $("lobby-notice").dataset.exit;
  state.profile = profile;
  remember(profile);
  if (roomFromPath() !== profile.room) history.replaceState(null, "", `/room/${encodeURIComponent(profile.room)}${location.search}`);
  if (!state.media) {
    if (showInsecurePage()) return showError("This page cannot use your microphone here: see above.");
    try {
      state.media = await getMedia();
      metrics.micOpenedAt = Date.now();
    } catch (error) {
      console.warn("microphone:", error);
      return showError(explainMediaError(error, "microphone"));
    }
    meterMic(state.media);
    if (state.cameraError) banner(`You joined without your camera. ${explainMediaError(state.cameraError, "camera")}`, "info");
  }
  await connect();
}

async function getMedia() {
  // The browser's echo cancellation keeps what this page plays out of its microphone (the gateway has its own
  // echo guard for what is left). Tests whose fake microphone is a file ask for it raw (?raw_audio=1): voice
  // processing would clip and gate it.
  const processed = !["1", "true", "yes"].includes(new URLSearchParams(location.search).get("raw_audio"));
  const audio = { echoCancellation: processed, autoGainControl: processed, noiseSuppression: processed, channelCount: 1 };
  const video = { width: 320, height: 240, frameRate: 15 };
  try {
    return await navigator.mediaDevices.getUserMedia({ audio, video });
  } catch (error) {
    state.cameraError = error;
    return await navigator.mediaDevices.getUserMedia({ audio });  // no camera: join with audio only
  }
}

// -- why the browser gives this page no microphone or camera, in words a person can act on ------------------
// Browsers give them only to secure pages: https, or http on the machine itself (localhost). The gateway
// names its HTTPS port in /api/config when it serves HTTPS; then the page links there.
function secureAddress() {
  const port = state.config?.https_port;
  if (!port) return null;
  return `https://${location.hostname}:${port}${location.pathname}${location.search}`;
}

// True (and the explanation shown) when this page cannot ask for a microphone at all.
function showInsecurePage() {
  if (window.isSecureContext && navigator.mediaDevices?.getUserMedia) return false;
  const secure = secureAddress();
  const where = `${location.protocol}//${location.host}`;
  $("insecure-text").textContent = `Your browser only lets a page use the microphone and camera over a secure ` +
    `(https) connection, or on the computer that runs BabelRoom. This page was opened over plain http from ` +
    `another computer (${where}), so you could not be heard. ` +
    (secure ? "Open the secure address instead:" : "Ask the person who runs BabelRoom for an https link " +
      "(they can start it with `babelroom up --https`, or put it behind HTTPS).");
  $("insecure-link").hidden = !secure;
  if (secure) { $("insecure-link").href = secure; $("insecure-link").textContent = secure; }
  $("insecure").hidden = false;
  return true;
}

function explainMediaError(error, device) {
  const again = "then press Join again.";
  switch (error?.name) {
    case "NotAllowedError": case "PermissionDeniedError": case "SecurityError":
      return `Your browser was told not to let this page use your ${device}. Click the icon at the left of the ` +
        `address bar, allow the ${device} for this site, ${again}`;
    case "NotFoundError": case "DevicesNotFoundError": case "OverconstrainedError":
      return `No ${device} was found. Plug one in, or switch it on in your computer's settings, ${again}`;
    case "NotReadableError": case "TrackStartError": case "AbortError":
      return `Your ${device} is in use by another program, or your computer would not start it. Close other ` +
        `programs that use it (another meeting, a recorder), ${again}`;
    default:
      return `Your browser could not start your ${device}. Check that one is connected and allowed for this site, ${again}`;
  }
}

async function connect() {
  // A first join asks this page's own address; a rejoin asks the addresses that may know where the room went.
  const through = state.rejoining ? rejoinAddresses() : [""];
  let failure = null;
  for (const address of through) {
    try {
      return await joinThrough(address, 0);
    } catch (error) {
      failure = error;  // that address is down too: the next one
    }
  }
  throw failure;
}

async function joinThrough(address, hops) {
  const p = state.profile;
  const response = await fetch(`${address}/api/rooms/${encodeURIComponent(p.room)}/join`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: p.name, speak: p.speak, hear: p.hear, token: p.token, options: p.options }),
  });
  const reply = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (response.status === 421 && reply.url && hops < MAX_NODE_HOPS) return joinThrough(reply.url, hops + 1);
  if (!response.ok) {
    if ((response.status >= 500 || response.status === 421) && state.rejoining) throw new Error(reply.error);
    return showError(reply.error || `Could not join (HTTP ${response.status})`);
  }
  state.me = reply;
  state.node = reply.node && reply.node.url !== location.origin ? reply.node.url : "";
  state.peers = reply.peers || state.peers;
  state.clusterUrl = reply.cluster_url || state.clusterUrl;
  openEvents();
  startJanus();
  enterMeeting();
}

// Where a page that lost its node asks to rejoin: the cluster's address, the address the person opened (only when
// it is one of the nodes: a link cannot send the page's media elsewhere), the other nodes, and its own node last.
function rejoinAddresses() {
  const entry = [location.origin, ...state.peers].includes(state.entry) ? state.entry : null;
  const all = [state.clusterUrl, entry, ...state.peers, state.node || location.origin].filter(Boolean);
  return [...new Set(all)].map((address) => (address === location.origin ? "" : address));
}

// A path of the node this session talks to.
function nodeUrl(path) {
  return state.node ? `${state.node}${path}` : path;
}

function socketUrl(path) {
  const base = new URL(state.node || location.origin);
  const scheme = base.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${base.host}${path}?ticket=${encodeURIComponent(state.me.ticket)}`;
}

// Something broke: tear down what is left of this session and join again, keeping name and languages.
// `serverSaid`: the reason in the close frame when the gateway ended the session (written for people: "media
// never connected within 20 s", "the gateway is stopping"); the banner shows it.
function lost(reason, serverSaid = "") {
  if (state.left || state.rejoining) return;
  state.rejoining = true;
  state.connected = false;
  onLive({ live: false });
  console.warn("connection lost:", reason, serverSaid);
  state.lostReasons.push(serverSaid ? `${reason}: ${serverSaid}` : String(reason));
  setConnection("reconnecting");
  banner(serverSaid ? `Connection lost (${serverSaid}). Reconnecting…` : "Connection lost. Reconnecting…");
  teardown(true);
  rejoin();
}

async function rejoin() {
  while (!state.left) {
    const delay = REJOIN_DELAYS_MS[Math.min(state.attempts, REJOIN_DELAYS_MS.length - 1)];
    state.attempts += 1;
    await new Promise((resolve) => setTimeout(resolve, delay));
    if (state.left) return;
    try {
      await connect();
      metrics.rejoins += 1;
      state.rejoining = false;
      return;
    } catch (error) {
      console.warn("rejoin:", error);
      banner("Connection lost. Reconnecting…");
    }
  }
}

function teardown(sayGoodbye) {
  const { me, janus, events } = state;
  clearTimeout(state.iceTimer);
  if (sayGoodbye && me) navigator.sendBeacon?.(nodeUrl(`/api/sessions/${me.id}/leave?ticket=${encodeURIComponent(me.ticket)}`));
  state.me = null;
  state.publisher = null;
  state.subs.clear();
  state.feedVideo = null;
  state.events = null;
  if (events) { events.onclose = null; events.close(); }
  if (janus) { try { janus.destroy({ cleanupHandles: true, notifyDestroyed: false }); } catch (error) { /* already gone */ } }
  state.janus = null;
  state.janusReady = false;
  for (const [id, tile] of state.tiles) { if (id !== "me") { tile.root.remove(); state.tiles.delete(id); } }
}

async function leave() {
  const me = state.me;
  state.left = true;
  teardown(false);
  if (me) await fetch(nodeUrl(`/api/sessions/${me.id}/leave?ticket=${encodeURIComponent(me.ticket)}`), { method: "POST" }).catch(() => {});
  backToLobby("You left the meeting. Join again whenever you like.");
}

// The gateway ended this participation for good: say why, and do not join again by ourselves.
function onExit(message) {
  if (state.exit) return;
  const advice = { removed: " To join again, ask the host for a new link.", expired: " Ask the host for a new link." };
  state.exit = message;
  state.left = true;
  teardown(false);
  backToLobby(`${message.message || "The meeting ended for you"}.${advice[message.reason] || ""}`);
  $("lobby-notice").dataset.exit = message.reason;
}

function backToLobby(notice) {
  onLive({ live: false });
  state.media?.getTracks().forEach((t) => t.stop());
  state.media = null;
  state.tiles.get("me")?.root.remove();
  state.tiles.delete("me");
  $("captions").replaceChildren();
  $("transcript-notice").hidden = true;
  setConnection("left");
  banner("");
  $("meeting").hidden = true;
  $("lobby").hidden = false;
  $("join-button").disabled = false;
  $("lobby-notice").textContent = notice;
  $("lobby-notice").hidden = false;
}

function enterMeeting() {
  $("lobby").hidden = true;
  $("meeting").hidden = false;
  $("room-label").textContent = `Room ${state.profile.room}`;
  $("caption-lang").textContent = `in ${languageName(state.profile.hear)}`;
  const tile = ensureTile("me", `${state.profile.name} (you)`);
  tile.video.srcObject = state.media;
  tile.video.muted = true;
  tile.video.play().catch(() => {});
  updateOwnTile();
  showMicStatus();
}

function languageName(code) {
  const entry = (state.config.languages || []).find((l) => l.code === code);
  return entry ? entry.name : code;
}

function setConnection(text) {
  const labels = { connected: "Connected", reconnecting: "Reconnecting…", left: "Not connected" };
  $("connection").textContent = labels[text] || text;
  $("connection").classList.toggle("live", text === "connected");
}

// -- the events socket --------------------------------------------------------------------------------
function openEvents() {
  const socket = new WebSocket(socketUrl(state.me.events));
  state.events = socket;
  socket.onmessage = (e) => onMessage(JSON.parse(e.data));
  socket.onclose = (e) => {
    if (state.events !== socket) return;
    if (FINAL_EXITS[e.code]) onExit({ reason: FINAL_EXITS[e.code], message: e.reason });
    else lost("events socket closed", e.reason);
  };
}

// The media socket dropped: if the events socket is still open, give it a moment to say whether the
// participation ended for good (it closes with a final code) before rejoining.
function afterEvents(then) {
  if (state.events?.readyState === WebSocket.OPEN) setTimeout(then, EXIT_WAIT_MS);
  else then();
}

function send(message) {
  if (state.events?.readyState === WebSocket.OPEN) state.events.send(JSON.stringify(message));
}

function onMessage(message) {
  const handlers = { roster: onRoster, floor: onFloor, caption: onCaption, playout: onPlayout, late: onLate, service: onService,
    transcript: onTranscript, live: onLive, retract: onRetract, error: onGatewayError, welcome: onWelcome,
    exit: onExit };
  (handlers[message.type] || (() => {}))(message);
}

function onWelcome(message) {
  state.role = message.role || "participant";
  $("end-meeting").hidden = state.role !== "host";
  for (const [id, tile] of state.tiles) if (id !== "me") tile.remove.hidden = state.role !== "host";
}

// A refusal of something this page asked. A host's refused removal is worth saying; a 400 is this page's own bug.
function onGatewayError(message) {
  console.warn("gateway:", message.error);
  if (message.status && message.status !== 400) banner(message.error);
}

// -- Janus: publish my feed, subscribe to what I should see and hear ---------------------------------------
function startJanus() {
  const me = state.me;
  state.janus = new Janus({
    server: socketUrl(me.janus),
    iceServers: me.ice_servers || [],
    destroyOnUnload: true,
    success: () => { state.janusReady = true; publish(me); syncSubscriptions(); },
    error: (error) => { if (state.me === me) afterEvents(() => { if (state.me === me) lost(`janus: ${error}`); }); },
  });
}

function publish(me) {
  state.janus.attach({
    plugin: PLUGIN,
    success: (handle) => {
      state.publisher = handle;
      handle.send({ message: { request: "join", ptype: "publisher", room: me.room_id, id: me.feed_id, display: me.name } });
    },
    error: (error) => lost(`publisher: ${error}`),
    onmessage: (message, jsep) => {
      if (message.videoroom === "joined") sendOwnMedia();
      if (message.error) console.warn("janus:", message.error);
      if (jsep) state.publisher.handleRemoteJsep({ jsep });
    },
    webrtcState: (up) => {
      state.connected = up;
      if (up && !metrics.connectedAt) metrics.connectedAt = Date.now();  // my audio reaches Janus from now on
      if (up) metrics.mediaUpAt.push(Date.now());  // each time: after a rejoin too
      setConnection(up ? "connected" : "reconnecting");
      if (up) { state.attempts = 0; banner(""); }
    },
    iceState: (ice) => {
      // "disconnected" often heals by itself within seconds (a Wi-Fi hiccup); "failed" never does
      clearTimeout(state.iceTimer);
      if (ice === "failed") lost("ice failed");
      if (ice === "disconnected") state.iceTimer = setTimeout(() => lost("ice disconnected"), ICE_DISCONNECTED_GRACE_MS);
    },
  });
}

function sendOwnMedia() {
  const mic = state.media.getAudioTracks()[0];
  const camera = state.media.getVideoTracks()[0];
  // dontStop: janus.js stops the tracks it was given when its session goes, and a rejoin needs them still live
  // (without it, a page that rejoined published a microphone that had been stopped: silence).
  const tracks = [{ type: "audio", capture: mic, recv: false, dontStop: true }];
  if (camera) tracks.push({ type: "video", capture: camera, recv: false, dontStop: true });
  state.publisher.createOffer({
    tracks,
    success: (jsep) => state.publisher.send({ message: { request: "publish", audio: true, video: Boolean(camera) }, jsep }),
    error: (error) => lost(`offer: ${error.message || error}`),
  });
}

// What I subscribe to from each feed: the others' video; their voice when I hear their language (or
// asked for originals); and the translated speech of my language.
function wantedStreams() {
  const p = state.profile;
  const wanted = new Map();
  for (const other of state.roster) {
    if (other.id === state.me?.id || !other.feed) continue;
    const voice = other.speak === p.hear || p.options.hear_original;
    const mids = other.streams.filter((s) => s.type === "video" || (s.type === "audio" && voice)).map((s) => s.mid);
    if (mids.length) wanted.set(other.feed, { mids, owner: other.id, gain: other.speak === p.hear ? 1 : ORIGINAL_UNDER_GAIN });
  }
  const translated = state.feeds[p.hear];
  const needed = state.roster.some((o) => o.id !== state.me?.id && o.speak !== p.hear);
  if (translated && needed) wanted.set(translated, { mids: null, owner: "translation", gain: 1 });
  return wanted;
}

function syncSubscriptions() {
  if (!state.janusReady || !state.me) return;  // called again once the Janus session is up
  const wanted = wantedStreams();
  for (const [feed, sub] of state.subs) {
    const want = wanted.get(feed);
    if (!want || subscriptionKey(want) !== sub.key) { sub.handle?.detach(); state.subs.delete(feed); }
  }
  for (const [feed, want] of wanted) if (!state.subs.has(feed)) subscribe(feed, want);
}

function subscriptionKey(want) {
  return `${want.owner}|${(want.mids || ["all"]).join(",")}|${want.gain}`;
}

function subscribe(feed, want) {
  const sub = { handle: null, key: subscriptionKey(want) };
  state.subs.set(feed, sub);
  const streams = want.mids ? want.mids.map((mid) => ({ feed, mid })) : [{ feed }];
  state.janus.attach({
    plugin: PLUGIN,
    success: (handle) => {
      sub.handle = handle;
      if (state.subs.get(feed) !== sub) return handle.detach();
      handle.send({ message: { request: "join", ptype: "subscriber", room: state.me.room_id, streams } });
    },
    error: (error) => {
      console.warn("subscribe:", error);
      if (state.subs.get(feed) === sub) { state.subs.delete(feed); setTimeout(syncSubscriptions, 1000); }
    },
    onmessage: (message, jsep) => {
      if (message.error) console.warn("janus:", message.error);
      if (!jsep) return;
      sub.handle.createAnswer({
        jsep,
        tracks: [{ type: "data" }],  // receive only: never capture the camera again for a subscription
        success: (answer) => sub.handle.send({ message: { request: "start" }, jsep: answer }),
        error: (error) => console.warn("answer:", error),
      });
    },
    onremotetrack: (track, mid, on) => { if (on) showTrack(want, track, sub.handle); },
  });
}

function showTrack(want, track, handle) {
  if (want.owner === "translation") {
    if (track.kind === "audio") attachTranslated(track, handle);
    else state.feedVideo = new MediaStream([track]);  // the speaker's face in step with the translation
    return;
  }
  const tile = state.tiles.get(want.owner);
  if (!tile) return;
  if (track.kind === "video") {
    tile.camera = new MediaStream([track]);
    if (!tile.translating) showVideo(tile, tile.camera);
  } else {
    tile.audio.srcObject = new MediaStream([track]);
    tile.audio.volume = want.gain;
    tile.audio.play().catch(() => {});
  }
}

function attachTranslated(track, handle) {
  state.translatedPc = handle.webrtcStuff?.pc || null;  // for tests that read its stats
  const element = $("translated-audio");
  element.srcObject = new MediaStream([track]);
  element.play().catch(() => {});
  meter(element.srcObject, (rms) => {
    metrics.translatedRms = rms;
    if (rms > SPEECH_RMS) metrics.translatedSoundAt.push(Date.now());
  });
}

// -- audio meters -------------------------------------------------------------------------------------
function meterMic(media) {
  let lastLoud = 0;
  let speaking = false;
  meter(new MediaStream(media.getAudioTracks()), (rms, now) => {
    metrics.micRms = rms;
    showMicLevel(rms);
    if (rms > SPEECH_RMS && !state.muted) {
      if (!speaking) metrics.speechStarts.push(now);
      lastLoud = now; speaking = true;
    }
    else if (speaking && now - lastLoud > SPEECH_END_HOLD_MS) { speaking = false; metrics.speechEnds.push(lastLoud); }
    state.tiles.get("me")?.root.classList.toggle("speaking", speaking);
  });
}

let audioContext = null;
const meters = new WeakMap();
function meter(stream, onLevel) {
  audioContext = audioContext || new AudioContext();
  const analyser = audioContext.createAnalyser();
  analyser.fftSize = 1024;
  audioContext.createMediaStreamSource(stream).connect(analyser);
  const buffer = new Float32Array(analyser.fftSize);
  meters.set(stream, setInterval(() => {
    analyser.getFloatTimeDomainData(buffer);
    let sum = 0;
    for (const v of buffer) sum += v * v;
    onLevel(Math.sqrt(sum / buffer.length), Date.now());
  }, 20));
}

// Whether the room can hear me: "connecting" until the gateway says it receives my audio (the "live" event),
// then live, with a level meter fed by my own track, or muted.
function onLive(message) {
  state.heard = Boolean(message.live);
  if (state.heard && !metrics.liveAt) {
    metrics.liveAt = Date.now();
    metrics.heardAt = (message.heard_at || 0) * 1000;  // when the gateway first received my audio (its clock)
  }
  showMicStatus();
}

function showMicStatus() {
  const status = state.muted ? "muted" : state.heard ? "live" : "connecting";
  const labels = { connecting: "Connecting your microphone…", live: "Live: the room hears you", muted: "Muted" };
  $("mic-status").dataset.micStatus = status;
  $("mic-label").textContent = labels[status];
}

function showMicLevel(rms) {
  const level = Math.min(1, Math.max(0, (20 * Math.log10(rms + 1e-9) + 60) / 60));  // -60..0 dBFS
  $("mic-level").style.width = `${Math.round(level * 100)}%`;
}

// -- room events --------------------------------------------------------------------------------------
function onFloor(message) {
  const pill = $("floor");
  const myId = state.me?.id;
  pill.hidden = !message.holder;
  const next = message.queue.length ? ` · next: ${message.queue.join(", ")}` : "";
  pill.textContent = message.holder ? `${message.holder_name} has the floor${next}` : "";
  pill.dataset.holder = message.holder || "";
  const mine = message.holder === myId || message.queue_ids.includes(myId);
  $("floor-button").dataset.action = mine ? "release" : "request";
  $("floor-button").textContent = message.holder === myId ? "Give up the floor" : mine ? "Leave the queue" : "Ask for the floor";
  for (const [id, tile] of state.tiles) {
    if (id !== "me") tile.root.classList.toggle("speaking", id === message.holder);
  }
}

function onPlayout(message) {
  $("playing").hidden = !message.playing;
  $("playing").textContent = message.playing ? `Translation playing · ${message.speaker}` : "";
  // While a consenting speaker's translation plays, their tile shows the feed's face, in step with it.
  for (const [id, tile] of state.tiles) {
    const translating = Boolean(message.playing && message.video && state.feedVideo && id === message.speaker_id);
    if (translating === Boolean(tile.translating)) continue;
    tile.translating = translating;
    tile.root.toggleAttribute("data-translated-video", translating);
    showVideo(tile, translating ? state.feedVideo : tile.camera);
  }
}

function showVideo(tile, stream) {
  if (!stream || tile.video.srcObject === stream) return;
  tile.video.srcObject = stream;
  tile.video.play().catch(() => {});
}

// The server's overload policy: under load lip-sync goes first, then translated speech; captions stay.
function onService(message) {
  const pill = $("service");
  pill.hidden = message.level === "full";
  pill.textContent = message.message;
  pill.dataset.level = message.level;
}

// A segment whose final pass found no words: the interim captions shown while it was spoken go.
function onRetract(message) {
  for (const el of document.querySelectorAll(`[data-caption-id="${CSS.escape(message.id)}"][data-final="false"]`)) el.remove();
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
  // a pending caption (original words, translation on its way) keeps the interim translation shown so far
  if (c.text || c.final) el.querySelector(".text").textContent = c.text || "";
  const showOriginal = c.original && (c.source_lang !== c.lang || !c.final);
  el.querySelector(".original").textContent = showOriginal ? `${c.source_lang}: ${c.original}` : "";
  el.querySelector(".note").textContent = c.note || "";
  if (c.final && !metrics.captionsShownAt[key]) metrics.captionsShownAt[key] = Date.now();
  if (!c.final && c.text && !metrics.interimShownAt[key]) metrics.interimShownAt[key] = Date.now();
  list.scrollTop = list.scrollHeight;
}

// -- the meeting's transcript: recorded only once someone turns it on, which every page shows --------------
function setUpTranscript() {
  const select = $("transcript-lang");
  select.add(new Option("In my language", ""));
  select.add(new Option("All languages", "all"));
  for (const { code, name } of state.config.languages) select.add(new Option(name, code));
  $("transcript-toggle").addEventListener("click", () => send({ type: "transcript", on: !state.transcript?.on }));
  $("transcript-link").addEventListener("click", () => { $("transcript-link").href = transcriptUrl(); });
}

// The room's people only: this page's session and ticket say it is one of them.
function transcriptUrl() {
  const query = new URLSearchParams({
    lang: $("transcript-lang").value || state.profile.hear, format: $("transcript-format").value,
    session: state.me?.id || "", ticket: state.me?.ticket || "",
  });
  return nodeUrl(`/api/rooms/${encodeURIComponent(state.profile.room)}/transcript?${query}`);
}

function onTranscript(message) {
  state.transcript = message;
  const notice = $("transcript-notice");
  notice.hidden = !message.on;
  notice.textContent = message.message;
  notice.dataset.by = message.by;
  notice.classList.toggle("full", message.full);
  const toggle = $("transcript-toggle");
  toggle.disabled = !message.can_toggle;
  toggle.classList.toggle("disabled", !message.can_toggle);
  if (!message.can_toggle) toggle.title = "Only the host can turn the transcript on or off";
  toggle.textContent = message.on ? "Stop transcript" : "Start transcript";
  toggle.setAttribute("aria-pressed", String(message.on));
  $("transcript-download").hidden = !message.exists;
}

// -- the video grid -----------------------------------------------------------------------------------
function ensureTile(id, label) {
  let tile = state.tiles.get(id);
  if (!tile) {
    const root = document.createElement("div");
    root.className = "tile";
    root.dataset.participant = id;
    root.innerHTML = '<div class="avatar"></div><video autoplay playsinline muted></video><audio autoplay></audio>' +
      '<div class="label"></div><div class="badge" data-muted hidden>muted</div>' +
      '<button class="remove" data-remove hidden>Remove</button>';
    $("grid").append(root);
    tile = { root, video: root.querySelector("video"), audio: root.querySelector("audio"), remove: root.querySelector("[data-remove]") };
    tile.remove.hidden = id === "me" || state.role !== "host";
    tile.remove.addEventListener("click", () => removeParticipant(id, tile.root.querySelector(".label").textContent));
    tile.video.addEventListener("resize", () => refreshAvatar(tile));
    state.tiles.set(id, tile);
  }
  tile.root.querySelector(".label").textContent = label;
  tile.root.querySelector(".avatar").textContent = label.slice(0, 1).toUpperCase();
  return tile;
}

// The avatar letter shows only where there is no picture: no camera, camera off, or no frame yet.
function refreshAvatar(tile, cameraOn = tile.cameraOn ?? true) {
  tile.cameraOn = cameraOn;
  const picture = cameraOn && tile.video.videoWidth > 0;
  tile.root.classList.toggle("no-video", !picture);
}

function updateOwnTile() {
  const tile = state.tiles.get("me");
  if (!tile) return;
  tile.root.querySelector("[data-muted]").hidden = !state.muted;
  const hasCamera = state.media?.getVideoTracks().length > 0;
  refreshAvatar(tile, hasCamera && state.cameraOn);
}

function onRoster(message) {
  state.roster = message.participants;
  state.feeds = message.feeds || {};
  const present = new Set(state.roster.map((p) => p.id));
  for (const [id, tile] of state.tiles) {
    if (id !== "me" && !present.has(id)) { tile.root.remove(); state.tiles.delete(id); }
  }
  for (const p of state.roster) {
    if (p.id === state.me?.id) continue;
    const lang = p.speak === p.hear ? p.speak : `${p.speak}→${p.hear}`;
    const tile = ensureTile(p.id, `${p.name} · ${lang}`);
    tile.root.querySelector("[data-muted]").hidden = !p.muted;
    refreshAvatar(tile, p.camera);
  }
  syncSubscriptions();
}

// -- controls -----------------------------------------------------------------------------------------
function toggleMute() {
  state.muted = !state.muted;
  state.media?.getAudioTracks().forEach((t) => { t.enabled = !state.muted; });
  $("mute").textContent = state.muted ? "Unmute" : "Mute";
  $("mute").setAttribute("aria-pressed", String(state.muted));
  send({ type: "mute", muted: state.muted });
  updateOwnTile();
  showMicStatus();
}

function toggleCamera() {
  state.cameraOn = !state.cameraOn;
  state.media?.getVideoTracks().forEach((t) => { t.enabled = state.cameraOn; });
  $("camera").textContent = state.cameraOn ? "Camera off" : "Camera on";
  $("camera").setAttribute("aria-pressed", String(!state.cameraOn));
  send({ type: "camera", on: state.cameraOn });
  updateOwnTile();
}

function floorButton() {
  send({ type: "floor", action: $("floor-button").dataset.action });
}

// A host's controls: the gateway checks the role again, and ends the person's access (or everyone's).
function removeParticipant(id, label) {
  if (confirm(`Remove ${label.split(" · ")[0]} from the meeting? Their link will not let them back in.`)) send({ type: "remove", participant: id });
}

function endMeeting() {
  if (confirm("End the meeting for everyone?")) send({ type: "end" });
}

async function main() {
  await loadConfig();
  state.clusterUrl = state.config.cluster_url || "";
  state.entry = new URLSearchParams(location.search).get("entry") || location.origin;
  Janus.init({ debug: false, dependencies: Janus.useDefaultDependencies() });
  $("join-form").addEventListener("submit", onSubmit);
  $("mute").addEventListener("click", toggleMute);
  $("camera").addEventListener("click", toggleCamera);
  $("floor-button").addEventListener("click", floorButton);
  $("leave").addEventListener("click", leave);
  setUpTranscript();
  $("end-meeting").addEventListener("click", endMeeting);
  $("show-original").addEventListener("change", (e) => $("captions").classList.toggle("hide-original", !e.target.checked));
  if (showInsecurePage()) return;  // say so at once, before anyone fills in the form
  const link = prefill();
  if (link.error) return showError(link.error);
  if (link.ready) start(readProfile()).catch(showFailure);
}

main();
