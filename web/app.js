// wschat web client: JSON mode (wschat.v1) over the page's own origin.
//
// Everything shown is inserted with textContent, never as HTML. Messages
// are kept per room by id, so a replay that arrives out of order or twice
// (after a reconnect) is shown once and in order. What a reload must not
// lose (nick, room, the last id seen in each room and its epoch) is kept in
// localStorage; the token only in sessionStorage.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const store = {
    get(key, fallback) {
      try {
        const value = localStorage.getItem("wschat." + key);
        return value === null ? fallback : JSON.parse(value);
      } catch {
        return fallback;
      }
    },
    set(key, value) {
      try {
        localStorage.setItem("wschat." + key, JSON.stringify(value));
      } catch {
        // Private mode or full: the page works, it just forgets on reload.
      }
    },
  };

  const HELP = [
    "/nick NAME        choose a nick",
    "/join ROOM        go to a room (created if nobody is in it)",
    "/msg NICK TEXT    a private message",
    "/who              who is in this room",
    "/rooms            the rooms and how many are in each",
    "/help             this list",
    "//text            send a message that starts with /",
  ];
  const NICK = /^[A-Za-z0-9_-]{1,24}$/;
  const ROOM = /^[a-z0-9_-]{1,32}$/;
  const PAGE = 50; // messages fetched per "Show earlier messages"

  const state = {
    ws: null,
    online: false,
    nick: "", // what the server calls this connection
    wantNick: store.get("nick", ""), // the nick chosen (asked for on every connect)
    room: store.get("room", "lobby"),
    // Room name -> its transcript: { items: Map(key -> element), order: the
    // elements in display order, first and last message id shown, epoch of
    // those ids, whether nothing older is stored, unread, mentions }
    rooms: new Map(),
    epoch: null, // the server's epoch, from its welcome
    roomEpoch: {}, // room -> epoch, where a gap said otherwise
    known: new Set(store.get("rooms", ["lobby"])), // rooms this browser has been in
    listed: new Map(), // room -> {members, last} from the server's last `rooms` answer
    lastSeen: store.get("last", {}), // room -> last id read
    epochs: store.get("epochs", {}), // room -> epoch of lastSeen
    resume: null,
    pending: new Map(), // cid -> {text, to, element}
    members: new Set(), // the current room's members
    membersMore: 0, // members the server did not list
    limits: null, // the server's pace, from its welcome
    echo: { who: false, rooms: false }, // show the next answer (the user asked)
    nextCid: 1,
    sent: [], // lines typed, for Up/Down
    recall: -1,
    backoff: 0,
    reconnectTimer: 0,
    hiddenMentions: 0,
    resuming: false,
    token: new URLSearchParams(location.search).get("token") || sessionStorage.getItem("wschat.token") || "",
  };
  if (!NICK.test(state.wantNick)) state.wantNick = "";
  if (!ROOM.test(state.room)) state.room = "lobby";
  state.known.add(state.room);

  // ---- rendering -------------------------------------------------------

  function roomState(name) {
    let room = state.rooms.get(name);
    if (!room) {
      room = { items: new Map(), order: [], unread: 0, mentions: 0, first: null, last: undefined };
      state.rooms.set(name, room);
    }
    return room;
  }

  // Local time; messages from another day also show the date.
  function time(ts) {
    const el = document.createElement("time");
    const date = new Date(ts);
    el.dateTime = date.toISOString();
    const clock = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const today = date.toDateString() === new Date().toDateString();
    el.textContent = today ? clock : date.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + clock;
    el.title = date.toLocaleString();
    return el;
  }

  // Message text with its web addresses made links (built as elements,
  // never parsed as HTML; only http and https become links).
  function richText(text) {
    const el = document.createElement("span");
    el.className = "text";
    const url = /\bhttps?:\/\/[^\s<>"]+[^\s<>".,;:!?)\]'}]/g;
    let at = 0;
    for (const match of text.matchAll(url)) {
      el.append(text.slice(at, match.index));
      const link = document.createElement("a");
      link.href = match[0];
      link.textContent = match[0];
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      el.append(link);
      at = match.index + match[0].length;
    }
    el.append(text.slice(at));
    return el;
  }

  // A nick in one of eight colours, the same one every time.
  function nickSpan(nick, suffix = "") {
    const el = span("from", nick + suffix);
    let hash = 0;
    for (const c of nick.toLowerCase()) hash = (hash * 31 + c.codePointAt(0)) >>> 0;
    el.classList.add("c" + (hash % 8));
    return el;
  }

  function line(kind, parts) {
    const el = document.createElement("div");
    el.className = "line " + kind;
    for (const part of parts) el.append(part);
    return el;
  }

  function span(cls, text) {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    return el;
  }

  function mentions(text) {
    if (!state.nick) return false;
    const escaped = state.nick.replace(/[-]/g, "\\-");
    return new RegExp("(^|[^A-Za-z0-9_-])@?" + escaped + "($|[^A-Za-z0-9_-])", "i").test(text);
  }

  const log = $("log");

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  // Puts an element into a room's transcript: a message by its id (a
  // replayed older one goes before the first later one), anything else at
  // the end. Only the current room's transcript is in the document.
  function place(roomName, key, id, el, epoch) {
    const room = roomState(roomName);
    if (room.items.has(key)) return false;
    room.items.set(key, el);
    let at = room.order.length;
    if (id !== null) {
      if (room.epoch !== epoch) {
        // The server lost this room's history: ids start again.
        if (room.epoch !== undefined && room.order.length > 0) {
          const divider = document.createElement("div");
          divider.className = "divider";
          divider.textContent = "the server's history starts again here";
          room.order.push(divider);
          if (roomName === state.room) log.append(divider);
          at = room.order.length;
        }
        room.epoch = epoch;
        room.first = null;
        room.last = undefined;
        room.oldest = false;
      }
      el.dataset.id = id;
      el.dataset.epoch = epoch;
      if (room.last !== undefined && id < room.last) {
        at = room.order.findIndex(
          (other) => other.dataset.epoch === String(epoch) && Number(other.dataset.id) > id,
        );
        if (at < 0) at = room.order.length;
      }
      room.last = Math.max(room.last ?? id, id);
      if (room.first === null || id < room.first) room.first = id;
    }
    room.order.splice(at, 0, el);
    if (roomName === state.room) {
      const stick = atBottom() || at === room.order.length - 1;
      const next = room.order[at + 1];
      if (next && next.parentNode === log) log.insertBefore(el, next);
      else log.append(el);
      if (stick) log.scrollTop = log.scrollHeight;
    }
    return true;
  }

  function note(kind, text, roomName = state.room) {
    const room = roomState(roomName);
    const key = "n" + room.items.size + "." + Math.random();
    place(roomName, key, null, line(kind, [time(Date.now()), span("text", text)]));
  }

  function showRoom(name) {
    const left = state.room;
    if (left !== name && state.lastSeen[left] === undefined && state.epoch !== null) {
      // Nothing was said while we were there: everything after is unread.
      seen(left, 0, state.roomEpoch[left] ?? state.epoch);
    }
    state.room = name;
    store.set("room", name);
    state.known.add(name);
    store.set("rooms", [...state.known]);
    const room = roomState(name);
    room.unread = 0;
    room.mentions = 0;
    log.replaceChildren(...room.order);
    log.scrollTop = log.scrollHeight;
    $("room-title").textContent = "#" + name;
    updateEarlier();
    renderRooms();
    updateTitle();
    state.members = new Set();
    state.membersMore = 0;
    renderMembers();
  }

  function updateEarlier() {
    const room = roomState(state.room);
    $("earlier").hidden = room.first === null || room.first <= 1 || room.oldest;
  }

  function updateTitle() {
    let mentioned = state.hiddenMentions;
    for (const [name, room] of state.rooms) if (name !== state.room) mentioned += room.mentions;
    document.title = (mentioned > 0 ? "(" + mentioned + ") " : "") + "#" + state.room + " · wschat";
  }

  function renderRooms() {
    const names = new Set([...state.known, ...state.listed.keys(), state.room]);
    const items = [...names].sort().map((name) => {
      const room = roomState(name);
      const listed = state.listed.get(name);
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.room = name;
      if (name === state.room) button.setAttribute("aria-current", "true");
      button.append(span("name", "#" + name));
      if (listed && listed.last && state.lastSeen[name] !== undefined && name !== state.room) {
        const behind = listed.last - state.lastSeen[name];
        if (behind > room.unread) room.unread = behind;
      }
      if (room.unread > 0 && name !== state.room) {
        const badge = span("unread" + (room.mentions > 0 ? " mention" : ""), String(room.unread));
        badge.title = room.unread + " unread";
        button.append(badge);
      }
      button.append(span("count", listed ? String(listed.members) : ""));
      const li = document.createElement("li");
      li.append(button);
      if (!listed && name !== state.room) {
        // A room nobody is in, kept because this browser was there: it
        // may be forgotten.
        const forget = document.createElement("button");
        forget.type = "button";
        forget.className = "forget";
        forget.dataset.forget = name;
        forget.textContent = "×";
        forget.title = "Forget #" + name;
        forget.setAttribute("aria-label", "Forget #" + name);
        li.append(forget);
      }
      return li;
    });
    $("rooms").replaceChildren(...items);
  }

  function renderMembers() {
    const more = state.membersMore;
    const nicks = [...state.members].sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
    const items = nicks.map((nick) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.nick = nick;
      button.title = "Send " + nick + " a private message";
      const name = span("name", nick);
      if (nick.toLowerCase() === state.nick.toLowerCase()) name.classList.add("me");
      button.append(name);
      const li = document.createElement("li");
      li.append(button);
      return li;
    });
    $("members").replaceChildren(...items);
    $("members-more").hidden = !more;
    $("members-more").textContent = more ? "and " + more + " more" : "";
  }

  function setStatus(stateName, text) {
    const status = $("status");
    status.dataset.state = stateName;
    status.textContent = text;
  }

  // ---- messages from the server ---------------------------------------

  // Remembers the last id read in a room, and the epoch it belongs to.
  function seen(roomName, id, epoch) {
    if (state.epochs[roomName] !== epoch || !(state.lastSeen[roomName] >= id)) {
      const same = state.epochs[roomName] === epoch;
      state.lastSeen[roomName] = same ? Math.max(state.lastSeen[roomName] || 0, id) : id;
      state.epochs[roomName] = epoch;
      store.set("last", state.lastSeen);
      store.set("epochs", state.epochs);
    }
  }

  function onMessage(m) {
    const own = m.cid !== undefined && state.pending.has(m.cid);
    if (own) {
      const pending = state.pending.get(m.cid);
      state.pending.delete(m.cid);
      pending.element.remove();
      const room = roomState(pending.room);
      room.order = room.order.filter((el) => el !== pending.element);
      room.items.delete(pending.key);
    }
    const mine = own || (m.from.toLowerCase() === state.nick.toLowerCase() && m.cid !== undefined);
    const mention = !mine && mentions(m.text);
    const el = line("message" + (mention ? " mention" : "") + (mine ? " self" : ""), [
      time(m.ts),
      nickSpan(m.from),
      richText(m.text),
    ]);
    const epoch = state.roomEpoch[m.room] ?? state.epoch;
    const added = place(m.room, "m" + epoch + ":" + m.id, m.id, el, epoch);
    if (m.room === state.room) {
      seen(m.room, m.id, epoch);
      if (added && mention && document.hidden) {
        state.hiddenMentions += 1;
        updateTitle();
      }
      updateEarlier();
    } else if (added && !m.history) {
      const room = roomState(m.room);
      room.unread += 1;
      if (mention) room.mentions += 1;
      renderRooms();
      updateTitle();
    }
  }

  function onPrivate(m) {
    if (m.cid !== undefined && state.pending.has(m.cid)) {
      const pending = state.pending.get(m.cid);
      state.pending.delete(m.cid);
      pending.element.classList.remove("pending");
      return;
    }
    const el = line("private", [
      time(m.ts),
      span("tag", "private"),
      nickSpan(m.from, m.to && m.from.toLowerCase() === state.nick.toLowerCase() ? " → " + m.to : ""),
      richText(m.text),
    ]);
    place(state.room, "p" + m.ts + m.from + Math.random(), null, el);
    if (document.hidden) {
      state.hiddenMentions += 1;
      updateTitle();
    }
  }

  function onFrame(m) {
    switch (m.type) {
      case "welcome": {
        note("info", state.welcomed ? "Reconnected" : m.text);
        state.welcomed = true;
        state.online = true;
        state.backoff = 0;
        state.limits = m.limits || null;
        outbox.length = 0;
        bucket.tokens = state.limits ? state.limits.rate_burst : 0;
        bucket.at = performance.now();
        state.resume = m.resume || null;
        state.epoch = m.epoch;
        state.roomEpoch = {};
        state.nick = m.nick;
        $("nick").value = state.wantNick || "";
        setStatus("online", "Connected");
        const room = m.room;
        state.roomEpoch[room] = m.epoch;
        // Resume the room from the last id seen there (a replay without
        // notices); the `who` after it is answered once the replay is
        // complete, and then unacknowledged messages go again.
        if (room === state.room && state.lastSeen[room] !== undefined && state.epochs[room] !== undefined) {
          send({ type: "join", room, after: state.lastSeen[room], epoch: state.epochs[room] });
        }
        state.resuming = true;
        send({ type: "who" });
        send({ type: "rooms" });
        showRoom(room);
        break;
      }
      case "message":
        onMessage(m);
        break;
      case "private":
        onPrivate(m);
        break;
      case "joined":
        if (m.nick.toLowerCase() === state.nick.toLowerCase()) {
          if (m.room !== state.room) {
            showRoom(m.room);
            send({ type: "who" });
            send({ type: "rooms" });
          }
        } else {
          note("notice", m.nick + " joined #" + m.room, m.room);
          if (m.room === state.room) {
            state.members.add(m.nick);
            renderMembers();
          }
        }
        break;
      case "left":
        if (m.nick.toLowerCase() !== state.nick.toLowerCase()) {
          note("notice", m.nick + " left #" + m.room, m.room);
          if (m.room === state.room) {
            state.members.delete(m.nick);
            renderMembers();
          }
        }
        break;
      case "renamed":
        if (m.old.toLowerCase() === state.nick.toLowerCase()) {
          state.nick = m.new;
          state.wantNick = m.new;
          store.set("nick", m.new);
          $("nick").value = m.new;
          note("notice", "you are now known as " + m.new);
        } else {
          note("notice", m.old + " is now known as " + m.new);
        }
        if (state.members.delete(m.old)) {
          state.members.add(m.new);
          renderMembers();
        }
        break;
      case "gap":
        state.roomEpoch[m.room] = m.epoch;
        if (m.first !== undefined) {
          note("info", m.first - m.after - 1 + " earlier messages are no longer stored", m.room);
        } else if (state.epochs[m.room] !== undefined && state.epochs[m.room] !== m.epoch) {
          note("info", "the server lost its history: some earlier messages were not kept", m.room);
          delete state.lastSeen[m.room];
          state.epochs[m.room] = m.epoch;
        }
        break;
      case "older":
        // Fewer than asked: nothing older is stored.
        if (m.count < PAGE) roomState(m.room).oldest = true;
        if (m.room === state.room) updateEarlier();
        break;
      case "members":
        if (state.echo.who) {
          state.echo.who = false;
          const more = m.more ? " and " + m.more + " more" : "";
          note("notice", m.nicks.length + (m.more || 0) + " in #" + m.room + ": " + m.nicks.join(", ") + more);
        }
        if (m.room === state.room) {
          state.members = new Set(m.nicks);
          state.membersMore = m.more || 0;
          renderMembers();
        }
        if (state.resuming) {
          state.resuming = false;
          resendPending();
        }
        break;
      case "rooms":
        if (state.echo.rooms) {
          state.echo.rooms = false;
          const list = m.rooms.map((r) => r.name + " (" + r.members + ")").join(", ");
          note("notice", "rooms: " + list + (m.more ? " and " + m.more + " more" : ""));
        }
        state.listed = new Map(m.rooms.map((r) => [r.name, r]));
        renderRooms();
        break;
      case "notice":
        note("notice", m.text);
        break;
      case "error":
        onError(m);
        break;
      default:
        break;
    }
  }

  function onError(m) {
    if (m.cid !== undefined && state.pending.has(m.cid)) {
      const pending = state.pending.get(m.cid);
      if (m.code === "rate_limited" || m.code === "unavailable") {
        // Not carried out: the message goes again shortly.
        setTimeout(() => {
          if (state.pending.get(m.cid) === pending && state.online) transmit(m.cid, pending);
        }, 1000);
        return;
      }
      state.pending.delete(m.cid);
      pending.element.remove();
    }
    note("error", m.text);
  }

  // ---- sending ---------------------------------------------------------

  // Requests go out through a queue that mirrors the server's token bucket
  // (`limits` in its welcome), so the page is never refused for its own
  // pace. A `who` or `rooms` already waiting is not queued twice.
  const outbox = [];
  const bucket = { tokens: 0, at: 0, timer: 0 };

  function send(frame) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    const refresh = frame.type === "who" || frame.type === "rooms";
    if (!(refresh && outbox.some((queued) => queued.type === frame.type))) outbox.push(frame);
    pump();
    return true;
  }

  function pump() {
    clearTimeout(bucket.timer);
    const limits = state.limits;
    while (outbox.length > 0) {
      if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
        outbox.length = 0;
        return;
      }
      if (limits && limits.rate > 0) {
        const now = performance.now();
        bucket.tokens = Math.min(limits.rate_burst, bucket.tokens + ((now - bucket.at) * limits.rate) / 10000);
        bucket.at = now;
        if (bucket.tokens < 1) {
          bucket.timer = setTimeout(pump, ((1 - bucket.tokens) * 10000) / limits.rate + 5);
          return;
        }
        bucket.tokens -= 1;
      }
      state.ws.send(JSON.stringify(outbox.shift()));
    }
  }

  function transmit(cid, pending) {
    if (pending.to) send({ type: "private", to: pending.to, text: pending.text, cid });
    else send({ type: "say", text: pending.text, cid });
  }

  function resendPending() {
    for (const [cid, pending] of state.pending) transmit(cid, pending);
  }

  function say(text, to) {
    const cid = "w" + Date.now().toString(36) + "-" + state.nextCid++;
    const parts = to
      ? [time(Date.now()), span("tag", "private"), span("from", (state.nick || "you") + " → " + to), span("text", text)]
      : [time(Date.now()), nickSpan(state.nick || "you"), richText(text)];
    const element = line((to ? "private" : "message self") + " pending", parts);
    const key = "c" + cid;
    place(state.room, key, null, element);
    const pending = { text, to, element, key, room: state.room };
    state.pending.set(cid, pending);
    if (state.online) transmit(cid, pending);
  }

  function command(input) {
    const [, name, rest = ""] = input.match(/^\/(\S*)\s*([\s\S]*)$/);
    const arg = rest.trim();
    switch (name.toLowerCase()) {
      case "nick":
        if (!NICK.test(arg)) return note("error", "a nick is 1-24 of A-Z a-z 0-9 _ -");
        return send({ type: "nick", nick: arg });
      case "join":
        return join(arg.toLowerCase());
      case "msg": {
        const match = rest.match(/^(\S+)\s+([\s\S]+)$/);
        if (!match) return note("error", "usage: /msg NICK TEXT");
        return say(match[2], match[1]);
      }
      case "who":
        state.echo.who = send({ type: "who" });
        return undefined;
      case "rooms":
        state.echo.rooms = send({ type: "rooms" });
        return undefined;
      case "help":
        for (const text of HELP) note("info", text);
        return undefined;
      default:
        return note("error", "unknown command /" + name + " (try /help)");
    }
  }

  function join(name) {
    if (!ROOM.test(name)) return note("error", "a room is 1-32 of a-z 0-9 _ -");
    if (name === state.room) return undefined;
    const frame = { type: "join", room: name };
    if (state.lastSeen[name] !== undefined && state.epochs[name] !== undefined) {
      frame.after = state.lastSeen[name];
      frame.epoch = state.epochs[name];
    }
    if (!send(frame)) note("error", "not connected: try again when the status says Connected");
    return undefined;
  }

  // ---- the connection --------------------------------------------------

  function socketUrl() {
    // Percent-encoded, not form-encoded: the server reads "+" as itself.
    const query = [["room", state.room]];
    if (state.wantNick) query.push(["nick", state.wantNick]);
    if (state.resume && state.wantNick) query.push(["resume", state.resume]);
    if (state.token) query.push(["token", state.token]);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/?" + query.map(([k, v]) => k + "=" + encodeURIComponent(v)).join("&");
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    let opened = false;
    const ws = new WebSocket(socketUrl(), "wschat.v1");
    state.ws = ws;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      onFrame(frame);
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      state.online = false;
      state.ws = null;
      if (!opened) {
        // Refused before the upgrade: find out whether a token is wanted.
        checkToken();
        return;
      }
      if (event.code === 1008 && event.reason === "flooding") {
        note("error", "the server closed the connection: too many requests");
      }
      retry();
    };
  }

  function retry() {
    state.backoff = Math.min(state.backoff ? state.backoff * 2 : 1, 15);
    const seconds = state.backoff + Math.random();
    setStatus("reconnecting", "Reconnecting in " + Math.round(seconds) + " s…");
    state.reconnectTimer = setTimeout(() => {
      setStatus("reconnecting", "Reconnecting…");
      connect();
    }, seconds * 1000);
  }

  // /metrics answers 401 exactly when the server wants a token (and this
  // is not it); anything else means the server is down or full.
  function checkToken() {
    const url = state.token ? "/metrics?token=" + encodeURIComponent(state.token) : "/metrics";
    fetch(url, { method: "GET", cache: "no-store" })
      .then((response) => {
        if (response.status === 401) askToken(Boolean(state.token));
        else retry();
      })
      .catch(() => retry());
  }

  function askToken(rejected) {
    setStatus("offline", "A token is needed");
    $("token-error").hidden = !rejected;
    const dialog = $("token-dialog");
    if (!dialog.open) dialog.showModal();
    $("token").focus();
  }

  $("token-form").addEventListener("submit", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("wschat.token", state.token);
    setStatus("connecting", "Connecting…");
    connect();
  });

  // ---- the page's controls ---------------------------------------------

  const input = $("message");
  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.replace(/\s+$/, "");
    if (!text.trim()) return;
    state.sent.push(text);
    if (state.sent.length > 100) state.sent.shift();
    state.recall = -1;
    input.value = "";
    autosize();
    if (text.startsWith("//")) say(text.slice(1));
    else if (text.startsWith("/")) command(text);
    else say(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Tab" && !event.shiftKey && completeNick()) {
      event.preventDefault();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("send-form").requestSubmit();
    } else if (event.key === "ArrowUp" && !input.value.slice(0, input.selectionStart).includes("\n")) {
      if (state.sent.length === 0) return;
      event.preventDefault();
      state.recall = state.recall < 0 ? state.sent.length - 1 : Math.max(0, state.recall - 1);
      input.value = state.sent[state.recall];
      autosize();
    } else if (event.key === "ArrowDown" && state.recall >= 0 && !input.value.slice(input.selectionEnd).includes("\n")) {
      event.preventDefault();
      state.recall += 1;
      input.value = state.recall < state.sent.length ? state.sent[state.recall] : "";
      if (state.recall >= state.sent.length) state.recall = -1;
      autosize();
    }
  });
  // Tab completes the nick being typed from the room's members (a second
  // Tab offers the next match); at the start of the line it adds ": ".
  const completion = { matches: [], next: 0, start: 0, end: -1 };
  function completeNick() {
    const caret = input.selectionStart;
    if (caret !== input.selectionEnd) return false;
    if (caret !== completion.end) {
      const word = input.value.slice(0, caret).match(/[A-Za-z0-9_-]*$/)[0];
      if (!word) return false;
      const lower = word.toLowerCase();
      completion.start = caret - word.length;
      completion.matches = [...state.members]
        .filter((nick) => nick.toLowerCase().startsWith(lower) && nick !== state.nick)
        .sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
      completion.next = 0;
    }
    if (completion.matches.length === 0) return false;
    const nick = completion.matches[completion.next % completion.matches.length];
    completion.next += 1;
    const suffix = completion.start === 0 ? ": " : " ";
    input.value = input.value.slice(0, completion.start) + nick + suffix + input.value.slice(caret);
    completion.end = completion.start + nick.length + suffix.length;
    input.setSelectionRange(completion.end, completion.end);
    return true;
  }
  input.addEventListener("input", () => {
    completion.end = -1;
  });

  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight + 2, 128) + "px";
  }
  input.addEventListener("input", autosize);

  $("nick-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const nick = $("nick").value.trim();
    if (!NICK.test(nick)) return note("error", "a nick is 1-24 of A-Z a-z 0-9 _ -");
    if (nick === state.nick) return undefined;
    if (!send({ type: "nick", nick })) {
      state.wantNick = nick;
      store.set("nick", nick);
    }
    return undefined;
  });

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = $("join-room").value.trim().replace(/^#/, "").toLowerCase();
    $("join-room").value = "";
    join(room);
    closePanes();
  });

  $("rooms").addEventListener("click", (event) => {
    const forget = event.target.closest("button[data-forget]");
    if (forget) {
      const name = forget.dataset.forget;
      state.known.delete(name);
      state.rooms.delete(name);
      delete state.lastSeen[name];
      delete state.epochs[name];
      store.set("rooms", [...state.known]);
      store.set("last", state.lastSeen);
      store.set("epochs", state.epochs);
      renderRooms();
      return;
    }
    const button = event.target.closest("button[data-room]");
    if (button) {
      join(button.dataset.room);
      closePanes();
    }
  });

  $("members").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-nick]");
    if (!button) return;
    input.value = "/msg " + button.dataset.nick + " ";
    closePanes();
    input.focus();
  });

  $("earlier").addEventListener("click", () => {
    const room = roomState(state.room);
    if (room.first !== null) send({ type: "older", before: room.first, limit: PAGE });
  });

  for (const [buttonId, paneId] of [["show-rooms", "rooms-pane"], ["show-members", "members-pane"]]) {
    $(buttonId).addEventListener("click", () => {
      const open = !$(paneId).classList.contains("open");
      closePanes();
      $(paneId).classList.toggle("open", open);
      $(buttonId).setAttribute("aria-expanded", String(open));
    });
  }
  function closePanes() {
    for (const id of ["rooms-pane", "members-pane"]) $(id).classList.remove("open");
    for (const id of ["show-rooms", "show-members"]) $(id).setAttribute("aria-expanded", "false");
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      state.hiddenMentions = 0;
      updateTitle();
    }
  });

  // Keep the room list fresh (members and unread counts).
  setInterval(() => {
    if (state.online && !document.hidden) send({ type: "rooms" });
  }, 15000);

  $("nick").value = state.wantNick;
  showRoom(state.room);
  connect();
})();
