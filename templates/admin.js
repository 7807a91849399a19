// gotrue.py admin console: plain JavaScript, no build step, nothing loaded from elsewhere.
//
// It signs in with the ordinary password grant and then calls the admin API like any client:
// it has no privilege of its own. The tokens live in this script's memory only (a reload signs
// out); the access token is refreshed with the refresh token while the tab is open.
//
// Every value that comes from the server (emails, names, metadata: attacker-controlled through
// signup) reaches the page as text: through textContent, Text nodes or form values, never as
// HTML. This file uses no innerHTML, outerHTML, insertAdjacentHTML, document.write or eval.
"use strict";

(function () {
  // This file is <API root>/admin/ui/admin.js, also behind a proxy's path prefix
  // (e.g. /.netlify/identity/admin/ui/admin.js): the API root is two levels up.
  const API_ROOT = document.currentScript
    ? new URL("../../", document.currentScript.src)
    : new URL("../", location.href);
  const REQUEST_TIMEOUT_MS = 30000;
  const USER_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  const $ = (id) => document.getElementById(id);

  // --- the session: in memory only -------------------------------------------------------

  let session = null; // {access, refresh, expiresAt, lifetime, email, sub, timer}
  let refreshing = null; // the refresh in flight, shared by every caller that needs it

  function claimsOf(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
    } catch (e) {
      return {};
    }
  }

  function storeTokens(tokens, email) {
    const lifetime = Math.max(Number(tokens.expires_in) || 3600, 1);
    if (session && session.timer) clearTimeout(session.timer);
    const claims = claimsOf(tokens.access_token);
    session = {
      access: tokens.access_token,
      refresh: tokens.refresh_token,
      lifetime: lifetime,
      expiresAt: Date.now() + lifetime * 1000,
      email: email || (session && session.email) || claims.email || "",
      sub: claims.sub || (session && session.sub) || "",
      timer: null,
    };
    // refresh a minute before expiry (half-way for very short lifetimes)
    const delay = (lifetime > 120 ? lifetime - 60 : lifetime / 2) * 1000;
    scheduleRefresh(session, delay);
  }

  function scheduleRefresh(mine, delay) {
    mine.timer = setTimeout(() => {
      if (session !== mine) return;
      // a refused refresh ends the session (refreshSession says so); a network failure is
      // tried again while the access token lasts
      refreshSession().catch(() => {
        if (session === mine && Date.now() < mine.expiresAt) scheduleRefresh(mine, 5000);
      });
    }, delay);
  }

  function forgetSession() {
    if (session && session.timer) clearTimeout(session.timer);
    session = null;
    refreshing = null;
  }

  function refreshSession() {
    if (!session) return Promise.reject(new ApiError(0, "You are signed out."));
    if (!refreshing) {
      const before = session;
      refreshing = request("POST", "token", {
        form: { grant_type: "refresh_token", refresh_token: before.refresh },
        auth: false,
      })
        .then((r) => {
          if (session === before) storeTokens(r.data);
        }, (err) => {
          if (session === before && err.status >= 400 && err.status < 500 && err.status !== 429) sessionLost(err);
          throw err;
        })
        .finally(() => {
          refreshing = null;
        });
    }
    return refreshing;
  }

  async function freshToken() {
    if (!session) throw new ApiError(0, "You are signed out.");
    const margin = Math.min(30000, (session.lifetime * 1000) / 4);
    if (Date.now() > session.expiresAt - margin) await refreshSession();
    if (!session) throw new ApiError(0, "You are signed out.");
    return session.access;
  }

  function sessionLost(err) {
    if (!session) return;
    forgetSession();
    clearData();
    showLogin();
    showError("Your session ended and you were signed out: " + describe(err) + " Sign in again.");
  }

  // --- talking to the API ----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, extra) {
      super(message);
      Object.assign(this, { status: status, retryAfter: null, code: "", errorId: "" }, extra || {});
    }
  }

  function apiUrl(path, query) {
    const url = new URL(path, API_ROOT);
    for (const [key, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.append(key, String(value));
    }
    return url;
  }

  // One HTTP request; resolves to {status, data, headers}, rejects with an ApiError in words.
  async function request(method, path, opts) {
    opts = opts || {};
    const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    let body;
    if (opts.form) {
      body = new URLSearchParams(opts.form);
    } else if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    }
    if (opts.auth !== false) headers.Authorization = "Bearer " + (await freshToken());
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    let response, text;
    try {
      response = await fetch(apiUrl(path, opts.query), {
        method: method, headers: headers, body: body, signal: abort.signal,
        credentials: "omit", cache: "no-store", redirect: "error", referrerPolicy: "no-referrer",
      });
      text = await response.text();
    } catch (e) {
      if (abort.signal.aborted) throw new ApiError(0, `The server did not answer within ${REQUEST_TIMEOUT_MS / 1000} seconds.`);
      throw new ApiError(0, "The server could not be reached; check the connection and try again.");
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null; // e.g. a proxy's HTML error page: described by its status below
      }
    }
    if (response.ok) return { status: response.status, data: data, headers: response.headers };

    const obj = data && typeof data === "object" ? data : {};
    let message = [obj.msg, obj.error_description, obj.error, obj.message]
      .find((m) => typeof m === "string" && m.trim()) || "";
    if (!message) message = `The server answered ${response.status} ${response.statusText || ""}`.trim() + ".";
    const err = new ApiError(response.status, message, {
      code: typeof obj.error === "string" ? obj.error : "",
      errorId: typeof obj.error_id === "string" ? obj.error_id : "",
      retryAfter: response.headers.get("Retry-After"),
    });
    // An expired access token: refresh once and try again.
    if (response.status === 401 && /^Invalid token/.test(message) && opts.auth !== false && !opts.retried && session) {
      await refreshSession(); // a refused refresh signs out (see refreshSession)
      return request(method, path, Object.assign({}, opts, { retried: true }));
    }
    throw err;
  }

  // An admin call: a refusal of the admin check ends the console's session with a clear word.
  async function api(method, path, opts) {
    try {
      return await request(method, path, opts);
    } catch (err) {
      if (err.status === 401 && session && /^(User not allowed|Invalid admin user)/.test(err.message)) {
        refuse(session.email);
      }
      throw err;
    }
  }

  function seconds(n) {
    n = Math.max(1, Math.ceil(Number(n) || 0));
    if (n < 90) return n === 1 ? "1 second" : `${n} seconds`;
    const m = Math.ceil(n / 60);
    return m === 1 ? "1 minute" : `${m} minutes`;
  }

  // An error as a sentence for the page.
  function describe(err) {
    if (!(err instanceof ApiError)) return "Unexpected problem in the console: " + ((err && err.message) || String(err)) + ".";
    let text = err.message.trim();
    if (!/[.!?]$/.test(text)) text += ".";
    if (err.status === 429 && err.retryAfter) {
      text += ` Wait ${seconds(err.retryAfter)} before trying again.`;
    } else if (err.status >= 500) {
      text = `The server failed (${err.status}): ${text}` + (err.errorId ? ` Reference: ${err.errorId}.` : "");
    }
    return text;
  }

  // --- page state: messages, busy indicator, views -----------------------------------------

  let busyCount = 0;
  const locks = new Map(); // control -> {count, was}: overlapping operations restore it once

  function lock(control) {
    const held = locks.get(control);
    if (held) {
      held.count += 1;
    } else {
      locks.set(control, { count: 1, was: control.disabled });
      control.disabled = true;
    }
  }

  function unlock(control) {
    const held = locks.get(control);
    if (!held) return;
    held.count -= 1;
    if (held.count === 0) {
      locks.delete(control);
      control.disabled = held.was;
    }
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  function showNotice(text) {
    const box = $("notice");
    box.textContent = text;
    box.hidden = !text;
  }

  function clearMessages() {
    showError("");
    showNotice("");
  }

  // Runs `work` while the page says what is running; the controls in `scope` are disabled.
  async function busy(label, scope, work) {
    busyCount += 1;
    $("busy-text").textContent = label;
    $("busy").hidden = false;
    document.body.classList.add("is-busy");
    $("main").setAttribute("aria-busy", "true");
    const controls = scope ? Array.from(scope.querySelectorAll("button:not([data-nolock]), input, select, textarea")) : [];
    controls.forEach(lock);
    try {
      return await work();
    } finally {
      controls.forEach(unlock);
      busyCount -= 1;
      if (busyCount === 0) {
        $("busy").hidden = true;
        $("busy-text").textContent = "";
        document.body.classList.remove("is-busy");
        $("main").removeAttribute("aria-busy");
      }
    }
  }

  // busy() plus error reporting: resolves to the result, or to undefined after showing the error.
  async function attempt(label, scope, doing, work) {
    showError("");
    try {
      return await busy(label, scope, work);
    } catch (err) {
      if (session || doing === "Sign-in") showError(`${doing} failed: ${describe(err)}`);
      return undefined;
    }
  }

  const VIEWS = ["login", "refused", "users", "user", "invite", "create", "audit", "export"];

  function showView(name) {
    $("loading").hidden = true;
    for (const view of VIEWS) $("view-" + view).hidden = view !== name;
    const signedIn = Boolean(session);
    $("nav").hidden = !signedIn;
    $("whoami").hidden = !signedIn;
    $("who-email").textContent = signedIn ? session.email : "";
    const section = name === "user" ? "users" : name;
    for (const link of $("nav").querySelectorAll("a")) {
      if (link.dataset.route === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  function showLogin() {
    showView("login");
    $("login-password").value = "";
    $("login-email").focus();
  }

  function refuse(email) {
    // The tokens are dropped, not revoked: /logout would end this user's sessions elsewhere
    // too, and these tokens never left this tab.
    forgetSession();
    clearData();
    $("refused-text").textContent =
      `${email || "This account"} signed in, but it is not an administrator of this site, so it cannot manage users.`;
    clearMessages();
    showView("refused");
  }

  // Nothing of the data the admin saw stays in the page once the session ends.
  function clearData() {
    for (const id of ["users-rows", "audit-rows", "user-fields"]) $(id).replaceChildren();
    for (const id of ["users-summary", "audit-summary", "user-title", "user-meta", "users-page", "audit-page", "export-state"]) {
      $(id).textContent = "";
    }
    for (const id of ["app-meta", "role-input", "export-secret", "invite-email", "create-email", "create-password",
                      "create-name", "create-role"]) {
      $(id).value = "";
    }
    currentUser = null;
  }

  // --- small DOM helpers (text only) --------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value); // attribute names are this file's own
    }
    for (const child of children) node.append(child === null || child === undefined ? "" : child); // strings become Text nodes
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function asText(value) {
    if (value === undefined || value === null) return "";
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function pretty(value) {
    return JSON.stringify(value === undefined ? {} : value, null, 2);
  }

  // The page numbers in a Link header. Only `page` is read from it: the paths in it are the
  // server's own, which a proxy's prefix may have changed.
  function parseLinks(header) {
    const pages = {};
    const re = /<([^>]*)>\s*;\s*rel="?([a-z]+)"?/gi;
    let match;
    while ((match = re.exec(header || ""))) {
      const page = Number(new URL(match[1], location.href).searchParams.get("page"));
      if (page > 0) pages[match[2].toLowerCase()] = page;
    }
    return pages;
  }

  function renderPager(prefix, state, pages) {
    state.last = pages.last || 1;
    $(prefix + "-page").textContent = `Page ${state.page} of ${Math.max(state.last, 1)}`;
    $(prefix + "-prev").disabled = !pages.prev;
    $(prefix + "-next").disabled = !pages.next;
    state.prev = pages.prev || null;
    state.next = pages.next || null;
  }

  // --- sign in / out -----------------------------------------------------------------------

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessages();
    const email = $("login-email").value.trim();
    const password = $("login-password").value;
    const ok = await attempt("Signing in…", $("login-form"), "Sign-in", async () => {
      const r = await request("POST", "token", { form: { grant_type: "password", username: email, password: password }, auth: false });
      storeTokens(r.data, email.toLowerCase());
      return true;
    });
    $("login-password").value = "";
    if (!ok) return;
    // The server's own admin check decides: any admin endpoint refuses a non-admin.
    try {
      await busy("Checking access…", null, () => request("GET", "admin/users", { query: { per_page: 1 } }));
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        refuse(email);
      } else {
        forgetSession();
        showLogin();
        showError("Sign-in failed: " + describe(err));
      }
      return;
    }
    route();
  });

  $("refused-back").addEventListener("click", () => {
    clearMessages();
    showLogin();
  });

  $("sign-out").addEventListener("click", async () => {
    if (!session) return;
    clearMessages();
    let problem = null;
    await busy("Signing out…", $("whoami"), async () => {
      try {
        await request("POST", "logout");
      } catch (err) {
        problem = err;
      }
    });
    forgetSession();
    clearData();
    showLogin();
    if (problem) {
      showError("Signed out of this tab, but the server could not end the session: " + describe(problem) +
        " The refresh token stays valid until it expires.");
    } else {
      showNotice("Signed out.");
    }
  });

  // --- users list --------------------------------------------------------------------------

  const usersState = { page: 1, perPage: 50, sort: "desc", filter: "", prev: null, next: null, last: 1 };

  let usersSeq = 0;

  async function loadUsers() {
    const seq = ++usersSeq;
    usersState.loading = true;
    const query = { page: usersState.page, per_page: usersState.perPage, sort: "created_at " + usersState.sort };
    if (usersState.filter) query.filter = usersState.filter;
    const r = await attempt("Loading users…", $("view-users"), "Loading users", () => api("GET", "admin/users", { query: query }));
    if (seq !== usersSeq) return; // a later load replaces this one
    usersState.loading = false;
    if (!r) return;
    const users = (r.data && Array.isArray(r.data.users)) ? r.data.users : [];
    const total = Number(r.headers.get("X-Total-Count") || users.length);
    const pages = parseLinks(r.headers.get("Link"));
    const rows = users.map((u) => {
      const meta = u.user_metadata || {};
      return el("tr", { "data-user-id": u.id },
        el("td", {}, el("a", { href: "#/users/" + encodeURIComponent(u.id), class: "user-link" }, asText(u.email))),
        el("td", { class: "user-name" }, asText(meta.full_name)),
        el("td", { class: "user-role" }, asText(u.role)),
        el("td", { title: when(u.confirmed_at) }, u.confirmed_at ? "yes" : "no"),
        el("td", { class: "nowrap" }, when(u.created_at)),
        el("td", { class: "nowrap" }, u.last_sign_in_at ? when(u.last_sign_in_at) : "never"));
    });
    if (!rows.length) {
      const text = usersState.filter ? `No users match “${usersState.filter}”.` : "No users yet.";
      rows.push(el("tr", { class: "empty" }, el("td", { colspan: "6" }, text)));
    }
    $("users-rows").replaceChildren(...rows);
    const noun = total === 1 ? "user" : "users";
    $("users-summary").textContent = usersState.filter
      ? `${total} ${noun} matching “${usersState.filter}”, ${usersState.sort === "asc" ? "oldest" : "newest"} first`
      : `${total} ${noun}, ${usersState.sort === "asc" ? "oldest" : "newest"} first`;
    $("users-sort").value = usersState.sort;
    $("users-sort-created").textContent = usersState.sort === "asc" ? "Created ▲" : "Created ▼";
    renderPager("users", usersState, pages);
  }

  $("users-search").addEventListener("submit", (event) => {
    event.preventDefault();
    clearMessages();
    usersState.filter = $("users-filter").value.trim();
    usersState.page = 1;
    loadUsers();
  });
  $("users-search-clear").addEventListener("click", () => {
    clearMessages();
    $("users-filter").value = "";
    usersState.filter = "";
    usersState.page = 1;
    loadUsers();
  });
  function setSort(direction) {
    clearMessages();
    usersState.sort = direction;
    usersState.page = 1;
    loadUsers();
  }
  $("users-sort").addEventListener("change", () => setSort($("users-sort").value));
  $("users-sort-created").addEventListener("click", () => setSort(usersState.sort === "asc" ? "desc" : "asc"));
  $("users-per-page").addEventListener("change", () => {
    clearMessages();
    usersState.perPage = Number($("users-per-page").value) || 50;
    usersState.page = 1;
    loadUsers();
  });
  $("users-prev").addEventListener("click", () => {
    if (!usersState.prev || usersState.loading) return;
    clearMessages();
    usersState.page = usersState.prev;
    loadUsers();
  });
  $("users-next").addEventListener("click", () => {
    if (!usersState.next || usersState.loading) return;
    clearMessages();
    usersState.page = usersState.next;
    loadUsers();
  });

  // --- one user ----------------------------------------------------------------------------

  let currentUser = null;

  let userSeq = 0;

  async function loadUser(id) {
    const seq = ++userSeq;
    currentUser = null;
    $("user-title").textContent = "";
    $("user-fields").replaceChildren();
    $("delete-confirm").hidden = true;
    const r = await attempt("Loading the user…", $("view-user"), "Loading the user", () => api("GET", "admin/users/" + encodeURIComponent(id)));
    if (r && seq === userSeq) renderUser(r.data);
  }

  function renderUser(user) {
    currentUser = user;
    $("user-title").textContent = asText(user.email);
    const fields = [
      ["ID", user.id], ["Audience", user.aud || "(default)"], ["Role", user.role || "(none)"],
      ["Confirmed", user.confirmed_at ? when(user.confirmed_at) : "no"], ["Created", when(user.created_at)],
      ["Updated", when(user.updated_at)], ["Last sign-in", user.last_sign_in_at ? when(user.last_sign_in_at) : "never"],
    ];
    if (user.invited_at) fields.push(["Invited", when(user.invited_at)]);
    if (user.confirmation_sent_at) fields.push(["Confirmation sent", when(user.confirmation_sent_at)]);
    if (user.recovery_sent_at) fields.push(["Recovery sent", when(user.recovery_sent_at)]);
    if (user.new_email) fields.push(["Pending new email", user.new_email]);
    const items = [];
    for (const [name, value] of fields) items.push(el("dt", {}, name), el("dd", {}, asText(value)));
    $("user-fields").replaceChildren(...items);
    $("role-input").value = asText(user.role);
    $("confirm-state").textContent = user.confirmed_at
      ? `Confirmed on ${when(user.confirmed_at)}.`
      : "Not confirmed: the user cannot sign in with a password yet.";
    $("confirm-user").hidden = Boolean(user.confirmed_at);
    $("confirm-hint").hidden = Boolean(user.confirmed_at);
    $("user-meta").textContent = pretty(user.user_metadata);
    $("app-meta").value = pretty(user.app_metadata);
    $("app-meta-error").hidden = true;
    $("app-meta").removeAttribute("aria-invalid");
    $("delete-confirm").hidden = true;
    $("delete-user").hidden = false;
  }

  async function updateUser(label, doing, changes, done) {
    const user = currentUser;
    if (!user) return;
    const r = await attempt(label, $("view-user"), doing,
      () => api("PUT", "admin/users/" + encodeURIComponent(user.id), { json: changes }));
    if (r) {
      renderUser(r.data);
      showNotice(done(r.data));
    }
  }

  $("role-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearMessages();
    const role = $("role-input").value.trim();
    if (!role) {
      showError("Enter a role: the admin API sets a role but cannot clear one.");
      return;
    }
    updateUser("Changing the role…", "Changing the role", { role: role },
      (u) => `The role of ${asText(u.email)} is now “${asText(u.role)}”.`);
  });

  $("confirm-user").addEventListener("click", () => {
    clearMessages();
    updateUser("Confirming…", "Confirming the address", { confirm: true }, (u) => `${asText(u.email)} is confirmed.`);
  });

  $("app-meta-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearMessages();
    const box = $("app-meta-error");
    let edited;
    try {
      edited = JSON.parse($("app-meta").value);
    } catch (e) {
      box.textContent = "Not valid JSON, nothing was saved: " + e.message;
      box.hidden = false;
      $("app-meta").setAttribute("aria-invalid", "true");
      return;
    }
    if (edited === null || typeof edited !== "object" || Array.isArray(edited)) {
      box.textContent = "app_metadata must be a JSON object ({ … }), nothing was saved.";
      box.hidden = false;
      $("app-meta").setAttribute("aria-invalid", "true");
      return;
    }
    box.hidden = true;
    $("app-meta").removeAttribute("aria-invalid");
    // The API merges top-level keys and deletes those sent as null: send null for every key
    // removed in the editor, so the stored object becomes what the editor shows.
    const patch = Object.assign({}, edited);
    for (const key of Object.keys((currentUser && currentUser.app_metadata) || {})) {
      if (!Object.prototype.hasOwnProperty.call(edited, key)) patch[key] = null;
    }
    updateUser("Saving app metadata…", "Saving app metadata", { app_metadata: patch },
      (u) => `Saved the app metadata of ${asText(u.email)}.`);
  });

  $("send-recovery").addEventListener("click", async () => {
    const user = currentUser;
    if (!user) return;
    clearMessages();
    // /recover is the public endpoint: it answers at once and mails in the background.
    const headers = user.aud ? { "X-JWT-AUD": user.aud } : {};
    const r = await attempt("Requesting a recovery mail…", $("view-user"), "Sending the recovery mail",
      () => request("POST", "recover", { json: { email: user.email }, headers: headers, auth: false }));
    if (r) showNotice(`A recovery mail is on its way to ${asText(user.email)}.`);
  });

  $("delete-user").addEventListener("click", () => {
    if (!currentUser) return;
    clearMessages();
    $("delete-question").textContent =
      `Delete ${asText(currentUser.email)}? The account and its sessions are removed; this cannot be undone.` +
      (session && currentUser.id === session.sub ? " This is your own account: the console will sign you out." : "");
    $("delete-confirm").hidden = false;
    $("delete-user").hidden = true;
    $("delete-no").focus();
  });

  $("delete-no").addEventListener("click", () => {
    $("delete-confirm").hidden = true;
    $("delete-user").hidden = false;
    $("delete-user").focus();
  });

  $("delete-yes").addEventListener("click", async () => {
    const user = currentUser;
    if (!user) return;
    clearMessages();
    const r = await attempt("Deleting the user…", $("view-user"), "Deleting the user",
      () => api("DELETE", "admin/users/" + encodeURIComponent(user.id)));
    if (r) {
      currentUser = null;
      pendingNotice = `Deleted ${asText(user.email)}.`;
      location.hash = "#/users";
    }
  });

  // --- invite and create -------------------------------------------------------------------

  $("invite-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessages();
    const email = $("invite-email").value.trim();
    const r = await attempt("Sending the invitation…", $("invite-form"), "Inviting " + email,
      () => api("POST", "invite", { json: { email: email } }));
    if (r) {
      $("invite-email").value = "";
      showNotice(`Invitation sent to ${asText(r.data.email)}.`);
    }
  });

  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessages();
    const body = { email: $("create-email").value.trim(), password: $("create-password").value,
                   confirm: $("create-confirm").checked };
    const role = $("create-role").value.trim();
    const name = $("create-name").value.trim();
    if (role) body.role = role;
    if (name) body.user_metadata = { full_name: name };
    const r = await attempt("Creating the user…", $("create-form"), "Creating the user",
      () => api("POST", "admin/users", { json: body }));
    if (r) {
      for (const id of ["create-email", "create-password", "create-name", "create-role"]) $(id).value = "";
      pendingNotice = `Created ${asText(r.data.email)}.`;
      location.hash = "#/users/" + encodeURIComponent(r.data.id);
    }
  });

  // --- audit log ---------------------------------------------------------------------------

  const auditState = { page: 1, perPage: 50, query: "", prev: null, next: null, last: 1 };

  let auditSeq = 0;

  async function loadAudit() {
    const seq = ++auditSeq;
    auditState.loading = true;
    const query = { page: auditState.page, per_page: auditState.perPage };
    if (auditState.query) query.query = auditState.query;
    const r = await attempt("Loading the audit log…", $("view-audit"), "Loading the audit log",
      () => api("GET", "admin/audit", { query: query }));
    if (seq !== auditSeq) return;
    auditState.loading = false;
    if (!r) return;
    const entries = Array.isArray(r.data) ? r.data : [];
    const rows = entries.map((entry) => {
      const p = entry.payload || {};
      const traits = p.traits || {};
      const actor = p.actor_name ? `${asText(p.actor_email)} (${asText(p.actor_name)})` : asText(p.actor_email);
      return el("tr", {},
        el("td", { class: "nowrap" }, when(entry.created_at || p.timestamp)),
        el("td", { class: "audit-actor" }, actor || asText(p.actor_id)),
        el("td", { class: "audit-action" }, asText(p.action)),
        el("td", { class: "nowrap" }, asText(p.log_type)),
        el("td", { class: "audit-target" }, asText(traits.user_email)));
    });
    if (!rows.length) rows.push(el("tr", { class: "empty" }, el("td", { colspan: "5" }, "No entries.")));
    $("audit-rows").replaceChildren(...rows);
    const total = Number(r.headers.get("X-Total-Count") || entries.length);
    $("audit-summary").textContent = `${total} ${total === 1 ? "entry" : "entries"}` +
      (auditState.query ? ` where ${auditState.query}` : "") + ", newest first";
    renderPager("audit", auditState, parseLinks(r.headers.get("Link")));
  }

  $("audit-search").addEventListener("submit", (event) => {
    event.preventDefault();
    clearMessages();
    const scope = $("audit-scope").value;
    const value = $("audit-value").value.trim();
    if (value && !scope) {
      showError("Choose what to filter on: author, action or type.");
      return;
    }
    auditState.query = scope && value ? `${scope}:${value}` : "";
    auditState.page = 1;
    loadAudit();
  });
  $("audit-search-clear").addEventListener("click", () => {
    clearMessages();
    $("audit-scope").value = "";
    $("audit-value").value = "";
    auditState.query = "";
    auditState.page = 1;
    loadAudit();
  });
  $("audit-prev").addEventListener("click", () => {
    if (!auditState.prev || auditState.loading) return;
    auditState.page = auditState.prev;
    loadAudit();
  });
  $("audit-next").addEventListener("click", () => {
    if (!auditState.next || auditState.loading) return;
    auditState.page = auditState.next;
    loadAudit();
  });

  // --- CSV export --------------------------------------------------------------------------

  // Whether the server has an export secret: asked without one, it refuses the secret (401)
  // when it has one, and takes "export" for a user id when it has none.
  async function probeExport() {
    $("export-form").hidden = true;
    $("export-state").textContent = "";
    try {
      await busy("Checking whether export is enabled…", $("view-export"),
        () => api("GET", "admin/users/export", { query: { per_page: 1 } }));
      $("export-form").hidden = false; // (a server that needs no secret)
    } catch (err) {
      if (err.status === 401 && /export secret/i.test(err.message)) {
        $("export-state").textContent = "Enter the export secret to download every user as a CSV file.";
        $("export-form").hidden = false;
      } else if (err.status === 400 || err.status === 404) {
        $("export-state").textContent =
          "Export is not enabled on this server: set GOTRUE_API_EXPORT_SECRET to enable it.";
      } else if (session) {
        showError("Checking the export failed: " + describe(err));
      }
    }
  }

  const CSV_COLUMNS = ["id", "email", "aud", "role", "full_name", "confirmed_at", "invited_at", "created_at",
                       "updated_at", "last_sign_in_at", "encrypted_password", "user_metadata", "app_metadata"];

  function csvCell(value) {
    let text = asText(value);
    // a leading = + - @ would be read as a formula by spreadsheets: these values are user input
    if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
    return '"' + text.replace(/"/g, '""') + '"';
  }

  function csvRow(user) {
    const meta = user.user_metadata || {};
    return CSV_COLUMNS.map((c) => {
      if (c === "full_name") return csvCell(meta.full_name);
      if (c === "user_metadata" || c === "app_metadata") return csvCell(JSON.stringify(user[c] || {}));
      return csvCell(user[c]);
    }).join(",");
  }

  $("export-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessages();
    const secret = $("export-secret").value;
    const lines = [CSV_COLUMNS.join(",")];
    const done = await attempt("Exporting users…", $("export-form"), "Exporting users", async () => {
      let page = 1;
      for (;;) {
        $("busy-text").textContent = `Exporting users… (page ${page})`;
        const r = await api("GET", "admin/users/export",
          { query: { page: page, per_page: 1000, sort: "created_at asc" }, headers: { "Export-Secret": secret } });
        for (const user of (r.data && r.data.users) || []) lines.push(csvRow(user));
        const next = parseLinks(r.headers.get("Link")).next;
        if (!next || next <= page) break;
        page = next;
      }
      return true;
    });
    if (!done) return;
    const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
    const link = el("a", { href: URL.createObjectURL(blob), download: `users-${new Date().toISOString().slice(0, 10)}.csv` });
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    const count = lines.length - 1;
    showNotice(`Exported ${count} ${count === 1 ? "user" : "users"} to ${link.download}.`);
  });

  // --- routing -----------------------------------------------------------------------------

  let pendingNotice = "";

  function route() {
    if (!session) {
      showLogin();
      return;
    }
    const hash = location.hash.replace(/^#\/?/, "");
    const [section, id] = hash.split("/");
    const notice = pendingNotice;
    pendingNotice = "";
    clearMessages();
    if (notice) showNotice(notice);
    if (section === "users" && id) {
      const userId = decodeURIComponent(id);
      showView("user");
      if (!USER_ID.test(userId)) {
        showError("That is not a user id.");
        return;
      }
      loadUser(userId);
    } else if (section === "invite" || section === "create") {
      showView(section);
      $(section + "-email").focus();
    } else if (section === "audit") {
      showView("audit");
      loadAudit();
    } else if (section === "export") {
      showView("export");
      probeExport();
    } else {
      showView("users");
      loadUsers();
    }
  }

  window.addEventListener("hashchange", route);
  // a click on the section already shown reloads it (no hashchange fires)
  $("nav").addEventListener("click", (event) => {
    const link = event.target.closest("a");
    if (link && link.getAttribute("href") === location.hash) route();
  });

  // never a blank screen: anything unexpected is said in words
  window.addEventListener("error", (event) => {
    showError("Unexpected problem in the console: " + (event.message || "unknown error") + ".");
  });
  window.addEventListener("unhandledrejection", (event) => {
    showError(describe(event.reason));
  });

  route();
})();
