// The ingress dashboard: logs in with an admin API token (kept in this tab's
// sessionStorage only), polls the JSON endpoints under /ui/api/ and renders
// them. Every value from the server is put in the page as text (textContent),
// never as HTML.
'use strict';

(function () {
  const TOKEN_KEY = 'ingress-dashboard-token';
  const REFRESH_MS = 2000;
  const APPS_SHOWN = 50; // the first apps by name; the filter narrows them

  let session = null;
  let refreshTimer = null;
  let tickTimer = null;
  let clockOffset = 0; // server time minus this browser's time, ms
  let appsSignature = '';
  let previousMetrics = null;
  // The last apps sample's request and 5xx counters, per app, for rates.
  let previousApps = null;
  let busy = 0; // actions in flight: no re-render meanwhile
  let errorShownUntil = 0; // an action's error stays this long (ms since epoch)

  const byId = (id) => document.getElementById(id);

  // An element with properties (class, textContent, href, ...), data-* and
  // aria-* attributes, and children (strings become text nodes).
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === 'class') node.className = value;
      else if (key.startsWith('data-') || key.startsWith('aria-')) node.setAttribute(key, String(value));
      else node[key] = value;
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, body) {
    const headers = { Authorization: 'Bearer ' + token() };
    const options = { method: 'GET', headers, cache: 'no-store' };
    if (body !== undefined) {
      options.method = 'POST';
      headers['Content-Type'] = 'application/json';
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      throw new ApiError(response.status, 'bad_answer', path + ' answered ' + response.status + ' without JSON');
    }
    if (!response.ok) {
      throw new ApiError(response.status, data && data.code, (data && data.error) || (path + ' answered ' + response.status));
    }
    return data;
  }

  // ------------------------------------------------------------ formatting

  function now() {
    return Date.now() + clockOffset;
  }

  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const parts = [];
    if (d) parts.push(d + 'd');
    if (d || h) parts.push(h + 'h');
    if (d || h || m) parts.push(m + 'm');
    parts.push((s % 60) + 's');
    return parts.slice(0, 3).join(' ');
  }

  function expiresText(at) {
    if (at === null || at === undefined) return 'never';
    const left = at - now();
    return left <= 0 ? 'expired' : 'in ' + duration(left);
  }

  function agoText(at) {
    if (!at) return '—';
    return duration(now() - at) + ' ago';
  }

  function timeText(at) {
    const date = new Date(at);
    return isNaN(date.getTime()) ? String(at) : date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }

  function rate(value) {
    if (value === null) return '—';
    return value < 10 ? value.toFixed(2) : value.toFixed(1);
  }

  function state(name) {
    return el('span', { class: 'state ' + name, textContent: name });
  }

  // Only http(s) links; anything else is shown as text.
  function link(url) {
    if (/^https?:\/\//i.test(url)) {
      return el('a', { href: url, textContent: url, target: '_blank', rel: 'noopener noreferrer' });
    }
    return document.createTextNode(url);
  }

  // -------------------------------------------------------------- rendering

  function setStatus(text, isError) {
    if (isError) errorShownUntil = Date.now() + 15000;
    const status = byId('status');
    status.textContent = text;
    status.className = isError ? 'status error' : 'status';
  }

  function versionRow(app, version) {
    const reachable = version.status === 'active' || version.status === 'ephemeral';
    const row = el('tr', {
      class: 'version',
      'data-app': app.name,
      'data-version': version.id,
      'data-label': version.label || '',
      'data-observed': version.observed_state,
      'data-desired': version.desired_state,
    });
    const labelCell = el('td', { class: 'label' }, version.label || '(production)');
    if (version.active) labelCell.append(el('span', { class: 'badge', textContent: 'active' }));
    if (version.status === 'expired') labelCell.append(el('span', { class: 'badge expired', textContent: 'expired' }));
    row.append(
      labelCell,
      el('td', { class: 'id', title: version.runtime + ' runtime' }, version.id),
      el('td', { class: 'branch' }, version.branch || '—'),
    );
    const urls = el('td', { class: 'url' });
    if (version.urls.length === 0) urls.append('—');
    version.urls.forEach((url, i) => {
      if (i) urls.append(el('br'));
      urls.append(link(url));
    });
    row.append(urls);
    row.append(el('td', {
      class: 'expires',
      'data-at': version.expires_at_ms === null ? '' : version.expires_at_ms,
      title: version.expires_at_ms === null ? '' : timeText(version.expires_at_ms),
    }, expiresText(version.expires_at_ms)));
    const desired = el('td', { class: 'desired' }, state(version.desired_state));
    if (version.pending) {
      desired.append(el('div', {
        class: 'note',
        textContent: '→ ' + version.pending.desired_state + ' at ' + timeText(version.pending.due_at_ms) +
          ' (' + version.pending.reason + ', ' + version.pending.actor + ')',
      }));
    }
    row.append(desired);
    const observed = el('td', { class: 'observed' }, state(version.observed_state));
    if (version.failure) observed.append(el('div', { class: 'error', textContent: version.failure }));
    row.append(observed);
    row.append(el('td', {
      class: 'activity',
      'data-at': version.last_activity_at_ms || '',
      title: version.last_activity_at_ms ? timeText(version.last_activity_at_ms) : 'no request since the ingress started',
    }, agoText(version.last_activity_at_ms)));
    row.append(el('td', { class: 'cold-start' },
      version.last_start_ms === null || version.last_start_ms === undefined ? '—' : version.last_start_ms + ' ms'));
    if (session.can_stop || session.can_wake) {
      const actions = el('td', { class: 'actions' });
      if (reachable && session.can_stop && (version.desired_state === 'running' || version.observed_state !== 'stopped')) {
        actions.append(el('button', {
          type: 'button', class: 'stop', textContent: 'Stop',
          onclick: (event) => act(event.currentTarget, 'stop', app.name, version),
        }));
      }
      if (reachable && session.can_wake && version.observed_state !== 'ready') {
        actions.append(el('button', {
          type: 'button', class: 'wake', textContent: 'Wake',
          onclick: (event) => act(event.currentTarget, 'wake', app.name, version),
        }));
      }
      row.append(actions);
    }
    return row;
  }

  function renderApps(data) {
    const container = byId('apps');
    const cards = [];
    for (const app of data.apps) {
      const hosts = app.hosts.length
        ? app.hosts.map((h) => h.kind === 'exact' ? h.host : h.host + ' (' + h.kind + ')').join(', ')
        : 'no hosts';
      const head = el('div', { class: 'app-head' },
        el('h3', { textContent: app.name }),
        el('span', { class: 'meta hosts', textContent: 'hosts: ' + hosts }),
        el('span', { class: 'meta', textContent: 'active version: ' + (app.active_version || 'none') }),
        el('span', { class: 'meta rates', textContent: '' }));
      const columns = ['label', 'version', 'branch', 'URL', 'expires', 'desired', 'observed', 'last request', 'last cold start'];
      if (session.can_stop || session.can_wake) columns.push('');
      const table = el('table', { class: 'versions' },
        el('thead', {}, el('tr', {}, ...columns.map((c) => el('th', { textContent: c })))));
      const body = el('tbody');
      for (const version of app.versions) body.append(versionRow(app, version));
      if (app.versions.length === 0) {
        body.append(el('tr', {}, el('td', { colSpan: columns.length, class: 'empty', textContent: 'no active version and no previews' })));
      }
      table.append(body);
      const card = el('div', { class: 'app', 'data-app': app.name }, head, table);
      if (app.other_versions) {
        card.append(el('p', { class: 'note', textContent: app.other_versions + ' older version(s) not shown (ingressctl versions ' + app.name + ')' }));
      }
      cards.push(card);
    }
    if (cards.length === 0) {
      cards.push(el('p', {
        class: 'empty',
        textContent: data.total_apps ? 'No app name contains this.' : 'No apps yet: ingressctl app create NAME',
      }));
    }
    container.replaceChildren(...cards);
  }

  // Each app's request and 5xx rates since the last sample, next to its name.
  function renderAppRates(data) {
    const before = previousApps;
    const seconds = before ? (data.now_ms - before.at) / 1000 : 0;
    const counts = {};
    for (const app of data.apps) {
      counts[app.name] = { requests: app.requests, errors: app.errors };
      const card = document.querySelector('.app[data-app="' + CSS.escape(app.name) + '"] .rates');
      if (!card) continue;
      const last = before && before.counts[app.name];
      if (!last || seconds <= 0) {
        card.textContent = app.requests + ' requests, ' + app.errors + ' 5xx';
        continue;
      }
      const per = (now, then) => rate(Math.max(0, now - then) / seconds);
      card.textContent = per(app.requests, last.requests) + ' req/s, ' + per(app.errors, last.errors) + ' 5xx/s';
    }
    previousApps = { at: data.now_ms, counts };
  }

  function renderAudit(data) {
    const rows = data.entries.map((entry) => el('tr', {},
      el('td', { textContent: timeText(entry.at_ms) }),
      el('td', { textContent: entry.actor }),
      el('td', { textContent: entry.action }),
      el('td', { textContent: entry.target }),
      el('td', { textContent: entry.detail })));
    byId('audit').tBodies[0].replaceChildren(...rows);
  }

  function renderMetrics(data) {
    const before = previousMetrics;
    const seconds = before ? (data.at_ms - before.at_ms) / 1000 : 0;
    const perSecond = (get) => {
      if (!before || seconds <= 0) return null;
      return Math.max(0, (get(data) - get(before)) / seconds);
    };
    const series = [
      ['all requests', (m) => m.requests.total],
      ['5xx answers', (m) => m.requests.by_status['5xx'] || 0],
      ['4xx answers', (m) => m.requests.by_status['4xx'] || 0],
    ];
    // Resolution kinds that have seen requests (the rest are all zero).
    for (const kind of Object.keys(data.requests.by_kind)) {
      if (data.requests.by_kind[kind] > 0) {
        series.push(['host resolved as ' + kind, (m) => m.requests.by_kind[kind] || 0]);
      }
    }
    const rows = series.map(([name, get]) => el('tr', {},
      el('td', { textContent: name }),
      el('td', { class: 'rate', textContent: rate(perSecond(get)) }),
      el('td', { textContent: String(get(data)) })));
    byId('rates').tBodies[0].replaceChildren(...rows);
    const starts = data.starts;
    const held = data.wake_seconds;
    const mean = held.count ? Math.round((held.sum / held.count) * 1000) + ' ms' : '—';
    byId('wakes').textContent = 'Starts (cold starts): ' + (starts.ready || 0) + ' ready, ' + (starts.failed || 0) +
      ' failed. Requests held while their version woke: ' + held.count + ', ' + mean + ' on average.';
    byId('rates-note').textContent = data.note;
    previousMetrics = data;
  }

  // Countdowns and "ago" times move every second without a re-render.
  function tick() {
    for (const cell of document.querySelectorAll('td.expires')) {
      const at = cell.getAttribute('data-at');
      cell.textContent = expiresText(at === '' ? null : Number(at));
    }
    for (const cell of document.querySelectorAll('td.activity')) {
      const at = cell.getAttribute('data-at');
      cell.textContent = agoText(at === '' ? null : Number(at));
    }
  }

  async function refresh() {
    if (!session) return;
    try {
      const filter = byId('filter').value.trim().toLowerCase();
      const [apps, audit, metrics] = await Promise.all([
        api('/ui/api/apps?limit=' + APPS_SHOWN + (filter ? '&q=' + encodeURIComponent(filter) : '')),
        api('/ui/api/audit?limit=50'),
        api('/ui/api/metrics'),
      ]);
      clockOffset = apps.now_ms - Date.now();
      // Counters move with every request: they update the rates in place
      // rather than re-render the tables.
      const signature = JSON.stringify(apps.apps, (key, value) =>
        key === 'requests' || key === 'errors' ? undefined : value);
      if (signature !== appsSignature && busy === 0) {
        appsSignature = signature;
        renderApps(apps);
      }
      renderAppRates(apps);
      byId('apps-count').textContent = apps.apps.length === apps.total_apps
        ? apps.total_apps + ' app(s)'
        : 'showing ' + apps.apps.length + ' of ' + apps.matched_apps + ' matching, ' + apps.total_apps + ' app(s) in all';
      renderAudit(audit);
      renderMetrics(metrics);
      tick();
      if (Date.now() >= errorShownUntil) {
        setStatus('Updated ' + new Date().toLocaleTimeString() + '; every ' + REFRESH_MS / 1000 + ' s.', false);
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        logout('Logged out: ' + e.message);
        return;
      }
      setStatus('Cannot refresh: ' + e.message, true);
    }
  }

  // Stop or wake `version` of `app`, as `ingressctl stop` / `wake --no-wait`.
  async function act(button, action, app, version) {
    busy += 1;
    button.disabled = true;
    const body = { app, version: version.id };
    try {
      try {
        await api('/ui/api/' + action, body);
      } catch (e) {
        // The active production version needs force, as with --force.
        if (action === 'stop' && e.code === 'failed_precondition' && version.active &&
            window.confirm(e.message + '\n\nStop it anyway?')) {
          await api('/ui/api/stop', { app, version: version.id, force: true });
        } else {
          throw e;
        }
      }
      setStatus((action === 'stop' ? 'Stopping ' : 'Waking ') + app + ' ' + (version.label || version.id) + '.', false);
    } catch (e) {
      setStatus(action + ' ' + app + ' ' + version.id + ': ' + e.message, true);
    } finally {
      busy -= 1;
      appsSignature = '';
      await refresh();
    }
  }

  // ---------------------------------------------------------- log in / out

  function show(loggedIn) {
    byId('login-view').hidden = loggedIn;
    byId('dashboard-view').hidden = !loggedIn;
    byId('logout').hidden = !loggedIn;
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    session = null;
    appsSignature = '';
    previousMetrics = null;
    previousApps = null;
    clearInterval(refreshTimer);
    clearInterval(tickTimer);
    byId('whoami').textContent = '';
    byId('apps').replaceChildren(el('p', { class: 'empty', textContent: 'Loading…' }));
    byId('login-error').textContent = message || '';
    show(false);
    byId('token').focus();
  }

  async function start() {
    try {
      session = await api('/ui/api/session');
    } catch (e) {
      logout(e instanceof ApiError && e.status === 401 ? 'The token is not valid: ' + e.message : e.message);
      return;
    }
    byId('whoami').textContent = 'token ' + session.name + ' (' + session.role + ')';
    byId('login-error').textContent = '';
    setStatus('', false);
    show(true);
    await refresh();
    refreshTimer = setInterval(refresh, REFRESH_MS);
    tickTimer = setInterval(tick, 1000);
  }

  byId('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = byId('token').value.trim();
    if (!value) {
      byId('login-error').textContent = 'Type a token.';
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    byId('token').value = '';
    start();
  });
  byId('logout').addEventListener('click', () => logout(''));
  let filterTimer = null;
  byId('filter').addEventListener('input', () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      appsSignature = '';
      refresh();
    }, 300);
  });

  if (token()) start();
  else show(false);
})();
