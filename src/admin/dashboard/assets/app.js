// shadowsteer dashboard: polls /api/v1 every 2 s with the bearer token kept in this tab's
// session storage, and draws the fleet, risk over time (uPlot), the riskiest paths, clients
// held, steering decisions and replication lag per region. No framework and no external requests: everything comes from this server.
(() => {
  'use strict';
  const KEY = 'shadowsteer.token';
  const POLL_MS = 2000;
  const RANGE_S = 3600;
  const POINTS = 120;
  const MAX_CHARTS = 12;
  const MAX_PATHS = 10;
  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#4d7c0f', '#be185d'];

  // What the page shows, also read by the browser test (window.sstDashboard).
  const view = {
    updates: 0, error: null, states: {}, paths: {},
    points: { risk: 0, health: 0, decisions: 0, replication: 0 },
    replication: { local_region: null, regions: {} },
  };
  window.sstDashboard = view;
  const charts = new Map();
  let clientsChart = null;
  let decisionsChart = null;
  let replicationChart = null;
  let timer = null;

  const $ = (id) => document.getElementById(id);

  function takeTokenFromFragment() {
    const m = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
    if (m) {
      sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
      // The token leaves the address bar (and the history) at once.
      history.replaceState(null, '', location.pathname + location.search);
    }
  }

  async function api(path) {
    const r = await fetch('/api/v1' + path, {
      headers: { Authorization: 'Bearer ' + sessionStorage.getItem(KEY) },
      cache: 'no-store',
    });
    if (r.status === 401) {
      const e = new Error('the server refused the token');
      e.auth = true;
      throw e;
    }
    if (!r.ok) {
      let msg = 'HTTP ' + r.status;
      try { msg = (await r.json()).message; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.json();
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  const pct = (x) => (x == null ? '–' : (100 * x).toFixed(0) + '%');
  const fixed = (x, n) => (x == null ? '–' : x.toFixed(n));

  function renderFleet(appliances, threshold) {
    const body = $('fleet').tBodies[0];
    body.replaceChildren();
    view.states = {};
    for (const a of appliances) {
      const tr = document.createElement('tr');
      tr.dataset.appliance = a.id;
      view.states[a.id] = a.state;
      cell(tr, a.region);
      cell(tr, a.id);
      cell(tr, a.state, 'state state-' + a.state);
      const risk = a.risk;
      // A score no scorer confirms any more counts as unknown-high in steering.
      if (risk && !risk.fresh) {
        cell(tr, 'stale (' + fixed(risk.score, 3) + ')', 'num over').title = 'not confirmed within risk.max_score_age: steering counts it as 1';
      } else {
        cell(tr, risk ? fixed(risk.score, 3) : '–', 'num' + (risk && risk.score > threshold ? ' over' : ''));
      }
      cell(tr, risk ? '[' + fixed(risk.low, 3) + ', ' + fixed(risk.high, 3) + ']' : '–', 'num');
      cell(tr, a.primary_clients + ' / ' + a.shadow_clients, 'num');
      cell(tr, a.health ? pct(a.health.cpu) : '–', 'num');
      cell(tr, a.health ? pct(a.health.mem) : '–', 'num');
      cell(tr, a.health ? String(a.health.sessions) : '–', 'num');
      body.appendChild(tr);
    }
  }

  // The paths steering counts, riskiest first: a client's path to its appliance moves it to
  // its shadow when combined with the appliance's own risk it crosses the threshold.
  function renderPaths(list) {
    const body = $('paths').tBodies[0];
    body.replaceChildren();
    view.paths = {};
    $('paths-note').hidden = list.paths.length > 0;
    for (const p of list.paths) {
      view.paths[p.subject] = p.score;
      const tr = document.createElement('tr');
      tr.dataset.path = p.subject;
      cell(tr, p.from);
      cell(tr, p.to + (p.to_kind === 'appliance' ? ' (appliance)' : ''));
      cell(tr, fixed(p.score, 3), 'num' + (p.score > list.threshold ? ' over' : ''));
      cell(tr, '[' + fixed(p.score_low, 3) + ', ' + fixed(p.score_high, 3) + ']', 'num');
      cell(tr, p.region);
      cell(tr, new Date(p.confirmed_at).toLocaleTimeString());
      body.appendChild(tr);
    }
  }

  function chartWidth(el) {
    return Math.max(300, (el.clientWidth || 430) - 8);
  }

  // Risk as a step function (scores are stored when they move), extended to now.
  function riskData(points, threshold, now) {
    const xs = [], s = [], lo = [], hi = [], th = [];
    for (const p of points) {
      xs.push(Date.parse(p.ts) / 1000);
      s.push(p.score); lo.push(p.low); hi.push(p.high); th.push(threshold);
    }
    if (points.length) {
      const last = points[points.length - 1];
      xs.push(now); s.push(last.score); lo.push(last.low); hi.push(last.high); th.push(threshold);
    } else {
      // No score stored yet: the threshold still spans the range.
      xs.push(now - RANGE_S, now); s.push(null, null); lo.push(null, null); hi.push(null, null);
      th.push(threshold, threshold);
    }
    return [xs, s, lo, hi, th];
  }

  function riskChart(id, data) {
    let entry = charts.get(id);
    if (!entry) {
      const box = document.createElement('div');
      box.dataset.chart = id;
      const title = document.createElement('div');
      title.className = 'chart-title';
      title.textContent = id;
      box.appendChild(title);
      $('risk-charts').appendChild(box);
      const step = uPlot.paths.stepped({ align: 1 });
      const opts = {
        width: chartWidth(box), height: 180,
        scales: { y: { range: (u, min, max) => [0, Math.min(1, Math.max(0.25, (max || 0) * 1.2))] } },
        series: [
          {},
          { label: 'risk', stroke: '#dc2626', width: 2, paths: step },
          { label: 'low', stroke: 'rgba(220,38,38,0.25)', paths: step },
          { label: 'high', stroke: 'rgba(220,38,38,0.25)', paths: step },
          { label: 'threshold', stroke: '#334155', dash: [6, 4], width: 1 },
        ],
        bands: [{ series: [3, 2], fill: 'rgba(220,38,38,0.12)' }],
        axes: [{}, { values: (u, v) => v.map((x) => x.toFixed(2)) }],
      };
      entry = new uPlot(opts, data, box);
      charts.set(id, entry);
    } else {
      entry.setData(data);
    }
  }

  function clientsData(series, from, to) {
    // Every appliance's buckets start at `from` with the same width, so timestamps line up.
    const xsSet = new Set();
    for (const s of series) for (const p of s.points) xsSet.add(Date.parse(p.ts) / 1000);
    const xs = [...xsSet].sort((a, b) => a - b);
    const data = [xs.length ? xs : [from, to]];
    for (const s of series) {
      const by = new Map(s.points.map((p) => [Date.parse(p.ts) / 1000, p.sessions]));
      data.push((xs.length ? xs : [from, to]).map((x) => (by.has(x) ? by.get(x) : null)));
    }
    return data;
  }

  function drawClients(series, from, to) {
    const data = clientsData(series, from, to);
    const box = $('clients-chart');
    const key = series.map((s) => s.id).join(',');
    if (!clientsChart || clientsChart.key !== key) {
      if (clientsChart) clientsChart.destroy();
      box.replaceChildren();
      clientsChart = new uPlot({
        width: chartWidth(box), height: 200,
        series: [{}].concat(series.map((s, i) => ({ label: s.id, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))),
      }, data, box);
      clientsChart.key = key;
    } else {
      clientsChart.setData(data);
    }
  }

  function drawDecisions(items, from, to) {
    const minute = 60;
    const start = Math.floor(from / minute) * minute;
    const xs = [], counts = [];
    for (let t = start; t <= to; t += minute) { xs.push(t); counts.push(0); }
    for (const d of items) {
      const i = Math.floor((Date.parse(d.decided_at) / 1000 - start) / minute);
      if (i >= 0 && i < counts.length) counts[i] += 1;
    }
    const data = [xs, counts];
    const box = $('decisions-chart');
    if (!decisionsChart) {
      decisionsChart = new uPlot({
        width: chartWidth(box), height: 200,
        series: [{}, { label: 'decisions', stroke: '#2563eb', fill: 'rgba(37,99,235,0.3)', paths: uPlot.paths.bars({ size: [0.8, 40] }) }],
      }, data, box);
    } else {
      decisionsChart.setData(data);
    }
    const body = $('decisions').tBodies[0];
    body.replaceChildren();
    for (const d of items.slice(0, 20)) {
      const tr = document.createElement('tr');
      cell(tr, new Date(d.decided_at).toLocaleTimeString());
      cell(tr, d.client);
      cell(tr, d.from_appliance || '–');
      cell(tr, d.to_appliance ?? 'none');
      cell(tr, d.reason);
      body.appendChild(tr);
    }
  }

  // Lag per source region over the samples the server keeps (about one a second), in
  // seconds, with the warning threshold dashed.
  function replicationData(status, now) {
    const regions = [...new Set(status.history.flatMap((s) => Object.keys(s.lags)))].sort();
    // Without samples the threshold still spans the last ten minutes.
    const xs = status.history.length ? status.history.map((s) => Date.parse(s.at) / 1000) : [now - 600, now];
    const warn = status.lag_warning_ms / 1000;
    const data = [xs];
    for (const r of regions) data.push(status.history.map((s) => (r in s.lags ? s.lags[r] / 1000 : null)));
    const samples = status.history.length;
    data.push(xs.map(() => warn));
    return { regions, data, samples };
  }

  function drawReplication(status, now) {
    $('replication-local').textContent = status.local_region ? '(as region ' + status.local_region + ' sees it)' : '';
    const note = $('replication-note');
    const none = !status.local_region && status.regions.length === 0;
    note.hidden = !none;
    note.textContent = none ? 'Replication is not set up: this is a single-region installation (shadowsteer db replication setup).' : '';
    const body = $('replication').tBodies[0];
    body.replaceChildren();
    view.replication = { local_region: status.local_region, regions: {} };
    for (const r of status.regions) {
      view.replication.regions[r.from] = r.lag_ms;
      const tr = document.createElement('tr');
      tr.dataset.region = r.from;
      cell(tr, r.from);
      cell(tr, (r.lag_ms / 1000).toFixed(2) + ' s', 'num lag' + (r.behind ? ' over' : ''));
      cell(tr, r.behind ? 'behind' : 'streaming', r.behind ? 'over' : 'state-active');
      body.appendChild(tr);
    }
    const { regions, data, samples } = replicationData(status, now);
    view.points.replication = samples;
    const box = $('replication-chart');
    const key = regions.join(',');
    if (!replicationChart || replicationChart.key !== key) {
      if (replicationChart) replicationChart.destroy();
      box.replaceChildren();
      replicationChart = new uPlot({
        width: chartWidth(box), height: 200,
        scales: { y: { range: (u, min, max) => [0, Math.max(status.lag_warning_ms / 1000 * 1.2, (max || 0) * 1.2)] } },
        series: [{}]
          .concat(regions.map((r, i) => ({ label: 'from ' + r, stroke: COLORS[i % COLORS.length], width: 2, value: (u, v) => (v == null ? '–' : v.toFixed(2) + ' s') })))
          .concat([{ label: 'warning', stroke: '#334155', dash: [6, 4], width: 1 }]),
        axes: [{}, { values: (u, v) => v.map((x) => x.toFixed(1) + ' s') }],
      }, data, box);
      replicationChart.key = key;
    } else {
      replicationChart.setData(data);
    }
  }

  async function refresh() {
    const now = Date.now() / 1000;
    const from = now - RANGE_S;
    const q = '?from=' + encodeURIComponent(new Date(from * 1000).toISOString()) + '&points=' + POINTS;
    const [appliances, paths, decisions, replication] = await Promise.all([
      api('/appliances'),
      api('/risk/paths?limit=' + MAX_PATHS),
      api('/decisions?limit=1000&from=' + encodeURIComponent(new Date(from * 1000).toISOString())),
      api('/replication'),
    ]);
    const risk = { threshold: paths.threshold };
    renderFleet(appliances, risk.threshold);
    renderPaths(paths);
    const shown = appliances.slice(0, MAX_CHARTS);
    const [histories, healths] = await Promise.all([
      Promise.all(shown.map((a) => api('/risk/appliances/' + encodeURIComponent(a.id) + '/history' + q))),
      Promise.all(shown.map((a) => api('/appliances/' + encodeURIComponent(a.id) + '/health' + q))),
    ]);
    let riskPoints = 0, healthPoints = 0;
    shown.forEach((a, i) => {
      riskPoints += histories[i].points.length;
      riskChart(a.id, riskData(histories[i].points, risk.threshold, now));
    });
    const series = shown.map((a, i) => ({ id: a.id, points: healths[i] }));
    for (const s of series) healthPoints += s.points.length;
    drawClients(series, from, now);
    drawDecisions(decisions.items, from, now);
    drawReplication(replication, now);
    view.points = { risk: riskPoints, health: healthPoints, decisions: decisions.items.length, replication: view.points.replication };
  }

  async function tick() {
    try {
      await refresh();
      view.updates += 1;
      view.error = null;
      $('status').textContent = 'updated ' + new Date().toLocaleTimeString() + ' (every 2 s)';
    } catch (e) {
      view.error = String(e.message || e);
      $('status').textContent = 'error: ' + view.error;
      if (e.auth) {
        sessionStorage.removeItem(KEY);
        showLogin();
        return;
      }
    }
    timer = setTimeout(tick, POLL_MS);
  }

  function showLogin() {
    if (timer) clearTimeout(timer);
    $('main').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
  }

  function start() {
    $('login').hidden = true;
    $('main').hidden = false;
    $('logout').hidden = false;
    tick();
  }

  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    $('token').value = '';
    if (t) {
      sessionStorage.setItem(KEY, t);
      start();
    }
  });
  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    showLogin();
  });
  takeTokenFromFragment();
  if (sessionStorage.getItem(KEY)) start(); else showLogin();
})();
