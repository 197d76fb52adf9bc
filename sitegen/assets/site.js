/* vakt operator site: live snippets, event filters, query prefill and runbook search.
 * Data from snippets is only ever placed with textContent or setAttribute on safe
 * attributes; never innerHTML. */
(function () {
  'use strict';
  var body = document.body;
  var root = body.getAttribute('data-root') || './';
  var snippetsUrl = body.getAttribute('data-snippets-url') || '/snippets/';
  var refreshMs = Math.max(1, parseInt(body.getAttribute('data-refresh'), 10) || 5) * 1000;
  var staleMs = Math.max(1, parseInt(body.getAttribute('data-stale-after'), 10) || 30) * 1000;
  var wanted = (body.getAttribute('data-snippets') || '').split(',').filter(Boolean);
  document.documentElement.className += ' js';

  /* ---------- DOM helpers ---------- */
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      parent.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return parent;
  }
  function token(s) { return String(s).replace(/[^a-z0-9-]/gi, ''); }
  function badge(kind, value) { return el('span', 'badge ' + kind + '-' + token(value), value); }
  function str(v) { return v === undefined || v === null ? '' : String(v); }
  function runbookLink(id) {
    var a = el('a', 'runbook-link', id);
    a.setAttribute('href', root + 'runbooks/' + encodeURIComponent(String(id)) + '/');
    return a;
  }
  function empty(text) { return el('p', 'empty', text); }
  function table(cls, headers, rows) {
    var wrap = el('div', 'scroll');
    var t = el('table', cls);
    var thead = el('thead'); var tr = el('tr');
    headers.forEach(function (h) { var th = el('th', null, h); th.setAttribute('scope', 'col'); tr.appendChild(th); });
    add(t, add(thead, tr));
    var tb = el('tbody');
    rows.forEach(function (r) { tb.appendChild(r); });
    t.appendChild(tb);
    return add(wrap, t);
  }
  function row(cells) {
    var tr = el('tr');
    cells.forEach(function (c) {
      var td = el('td');
      if (c !== null && typeof c === 'object') td.appendChild(c); else td.textContent = str(c);
      tr.appendChild(td);
    });
    return tr;
  }

  /* ---------- shape checks (minimal; the schemas are in schemas/snippets/) ---------- */
  function isObj(v) { return v !== null && typeof v === 'object' && !Array.isArray(v); }
  function isStr(v) { return typeof v === 'string'; }
  function arrOf(v, check) { return Array.isArray(v) && v.every(check); }
  function condOk(c) {
    return isObj(c) && isStr(c.id) && isStr(c.kind) && isStr(c.title) && isStr(c.runbook) &&
      isStr(c.escalation_class) && isStr(c.remediation_mode);
  }
  var SHAPES = {
    summary: function (d) { return isObj(d.decision) && isStr(d.decision.level) && isStr(d.decision.headline) && isObj(d.counts); },
    actions: function (d) { return arrOf(d.conditions, condOk) && (d.alerts === undefined || (isObj(d.alerts) && Array.isArray(d.alerts.firing) && Array.isArray(d.alerts.silenced))); },
    tasks: function (d) { return arrOf(d.tasks, function (t) { return isObj(t) && isStr(t.id) && isStr(t.state); }); },
    events: function (d) { return arrOf(d.events, function (e) { return isObj(e) && isStr(e.id) && isStr(e.at) && isStr(e.message); }); },
    health: function (d) { return arrOf(d.services, isObj) && arrOf(d.nodes, isObj) && arrOf(d.conditions, condOk); },
    inventory: function (d) { return arrOf(d.declared, isObj) && arrOf(d.discovered, isObj) && arrOf(d.conditions, condOk); },
    sites: function (d) { return arrOf(d.sites, function (s) { return isObj(s) && Array.isArray(s.links); }) && arrOf(d.failovers, isObj) && arrOf(d.conditions, condOk); },
    dr: function (d) { return arrOf(d.stores, isObj) && arrOf(d.conditions, condOk); }
  };
  function checkShape(name, d) {
    if (!isObj(d)) return 'not a JSON object';
    if (d.version !== 1) return 'unsupported version ' + JSON.stringify(d.version);
    if (!isStr(d.generated_at) || isNaN(Date.parse(d.generated_at))) return 'generated_at is not a timestamp';
    if (SHAPES[name] && !SHAPES[name](d)) return 'does not match schemas/snippets/' + name + '.schema.json';
    return null;
  }

  /* ---------- renderers, one per data-live kind ---------- */
  function renderConditions(list) {
    if (!list.length) return empty('No conditions.');
    var ul = el('ul', 'conditions');
    list.forEach(function (c) {
      var li = el('li', 'cond esc-' + token(c.escalation_class));
      li.setAttribute('data-id', str(c.id));
      li.setAttribute('data-kind', str(c.kind));
      add(li, add(el('p', 'cond-head'), badge('esc', c.escalation_class), ' ', badge('rem', c.remediation_mode), ' ', el('span', 'kind', c.kind)));
      add(li, el('p', 'cond-title', c.title));
      var meta = el('p', 'cond-meta');
      ['env', 'site', 'tenant', 'resource', 'task_id', 'correlation_id', 'since'].forEach(function (k) {
        if (c[k]) add(meta, el('span', null, k + ': ' + c[k]), ' ');
      });
      li.appendChild(meta);
      if (c.detail) li.appendChild(el('p', 'cond-detail', c.detail));
      var rbp = add(el('p', 'cond-runbook'), 'Runbook: ', runbookLink(c.runbook));
      if (c.owner) add(rbp, ' · owner ' + str(c.owner));
      if (c.governance_gap) add(rbp, ' ', el('span', 'badge gap', 'governance gap'));
      li.appendChild(rbp);
      var ch = renderChanges(c.changes);
      if (ch) li.appendChild(ch);
      ul.appendChild(li);
    });
    return ul;
  }
  function renderChanges(list) {
    if (!Array.isArray(list) || !list.length) return null;
    var box = el('div', 'changes');
    box.appendChild(el('p', 'changes-h', 'What changed before it'));
    var ul = el('ul');
    list.forEach(function (c) {
      var text = str(c.at) + ' · ' + str(c.action) + (c.events > 1 ? ' ×' + c.events : '') + ' by ' + str(c.actor) +
        (c.commit ? ' · commit ' + str(c.commit).slice(0, 12) : '') + (c.plan_id ? ' · plan ' + str(c.plan_id) : '') +
        (c.target ? ' · ' + str(c.target) : '') + ' ';
      var li = add(el('li', null, text), el('small', null, '(' + str(c.matched) + ')'));
      li.setAttribute('data-event', str(c.event_id));
      ul.appendChild(li);
    });
    return add(box, ul);
  }
  function renderAlertSources(list) {
    if (!Array.isArray(list) || !list.length) return el('span');
    var ul = el('ul', 'alert-sources');
    list.forEach(function (x) {
      var li = el('li', 'source source-' + token(x.state));
      li.setAttribute('data-source-name', str(x.name));
      add(li, badge('source', x.state), ' ' + str(x.name));
      if (x.error) add(li, ' ', el('small', null, x.error));
      if (x.last_success_at) add(li, ' ', el('small', null, 'last good answer ' + x.last_success_at));
      ul.appendChild(li);
    });
    return ul;
  }
  function renderMetricsSource(ms) {
    if (!isObj(ms)) {
      var u = el('p', 'metrics-mode', 'Metrics source: unknown (the daemon does not report its mode)');
      u.setAttribute('data-mode', 'unknown');
      return u;
    }
    var box = el('div', 'metrics-source mode-' + token(ms.mode) + (ms.degraded ? ' degraded' : ''));
    box.setAttribute('data-mode', str(ms.mode));
    box.setAttribute('data-configured-mode', str(ms.configured_mode));
    if (ms.degraded) {
      var b = add(el('p', 'banner metrics-degraded', 'metrics backend unreachable: showing in-process counters since the daemon started · runbook '), runbookLink(ms.runbook));
      b.setAttribute('role', 'alert');
      b.setAttribute('data-banner', 'metrics-degraded');
      box.appendChild(b);
    }
    var line = add(el('p', 'metrics-mode'), 'Metrics source: ', badge('mode', ms.mode));
    if (ms.configured_mode === 'backend') {
      add(line, ' backend ' + str(ms.backend_host));
      if (ms.degraded) {
        add(line, ' failing since ' + str(ms.degraded_since || '?') + ': ' + str(ms.error) + (ms.last_success_at ? ' · last good answer ' + str(ms.last_success_at) : ''));
      } else if (ms.mode === 'backend') {
        add(line, ' · 24 h totals, checked ' + str(ms.checked_at));
      } else {
        add(line, ' · not queried yet');
      }
    } else {
      add(line, ' in-process counters only (no metrics backend configured)');
    }
    add(line, ' · in-process since ' + str(ms.in_memory_since) + ' · runbook ', runbookLink(ms.runbook));
    box.appendChild(line);
    var figs = Array.isArray(ms.figures) ? ms.figures : [];
    if (figs.length) {
      box.appendChild(table('metric-figures', ['Figure', 'Label', 'Value', 'Source', 'Window'], figs.map(function (f) {
        var src = add(el('span'), badge('mode', f.source));
        if (f.stale) add(src, ' ', el('span', 'badge stale', 'stale'));
        var r = row([str(f.metric).replace(/_/g, ' '), f.label, typeof f.value === 'number' ? String(Math.round(f.value)) : '', src, str(f.window).replace(/_/g, ' ')]);
        r.setAttribute('data-source', str(f.source));
        if (f.stale) r.className = 'stale';
        return r;
      })));
    }
    return box;
  }
  function renderAlertCard(a) {
    var li = el('li', 'alert-card esc-' + token(a.escalation_class) + (a.stale ? ' stale' : ''));
    li.setAttribute('data-fingerprint', str(a.fingerprint));
    li.setAttribute('data-state', str(a.state));
    var head = add(el('p', 'cond-head'), badge('esc', a.escalation_class), ' ', badge('rem', a.remediation_mode), ' ', el('span', 'kind', a.state));
    if (a.stale) add(head, ' ', el('span', 'badge stale', 'stale'));
    if (a.governance_gap) add(head, ' ', el('span', 'badge gap', 'governance gap'));
    add(li, head, el('p', 'cond-title', a.name));
    if (a.summary) li.appendChild(el('p', 'cond-detail', a.summary));
    var meta = el('p', 'cond-meta');
    ['tenant', 'service', 'site', 'node', 'owner', 'starts_at'].forEach(function (k) {
      if (a[k]) add(meta, el('span', null, k + ': ' + a[k]), ' ');
    });
    add(meta, el('span', 'alert-sources-seen', 'seen by: ' + (a.sources || []).join(', ')));
    li.appendChild(meta);
    (a.silenced_by || []).forEach(function (x) {
      li.appendChild(el('p', 'silence', 'Silenced by ' + str(x.created_by) + ' until ' + str(x.ends_at) + ': ' + str(x.comment)));
    });
    if (a.inhibited_by && a.inhibited_by.length) li.appendChild(el('p', 'silence', 'Inhibited by ' + a.inhibited_by.join(', ')));
    add(li, add(el('p', 'cond-runbook'), 'Runbook: ', runbookLink(a.runbook)));
    var ch = renderChanges(a.changes);
    if (ch) li.appendChild(ch);
    return li;
  }
  function renderAlerts(v) {
    var box = el('div', 'alerts');
    if (!isObj(v)) return add(box, empty('No alert data.'));
    box.appendChild(renderAlertSources(v.sources));
    box.appendChild(el('p', 'alert-counts', str(v.firing_total) + ' firing · ' + str(v.silenced_total) + ' silenced or inhibited'));
    if (Array.isArray(v.groups) && v.groups.length) {
      box.appendChild(table('alert-groups', ['Signal', 'Escalation', 'Firing', 'Silenced', 'Not listed', 'Runbook'], v.groups.map(function (g) {
        return row([g.signal, badge('esc', g.escalation_class), str(g.firing), str(g.silenced), str(g.unlisted), runbookLink(g.runbook)]);
      })));
    }
    [['Firing', 'firing', 'No firing alerts.'], ['Silenced and inhibited', 'silenced', 'None.']].forEach(function (p) {
      box.appendChild(el('h4', null, p[0]));
      var list = Array.isArray(v[p[1]]) ? v[p[1]] : [];
      if (!list.length) { box.appendChild(empty(p[2])); return; }
      var ul = el('ul', 'alert-cards ' + p[1]);
      list.forEach(function (a) { ul.appendChild(renderAlertCard(a)); });
      box.appendChild(ul);
    });
    return box;
  }
  function renderDecision(s) {
    var d = el('div', 'decision level-' + token(s.decision.level));
    d.appendChild(renderMetricsSource(s.metrics_source));
    add(d, el('p', 'decision-level', s.decision.level), el('p', 'decision-headline', s.decision.headline));
    var dl = el('dl', 'counts');
    Object.keys(s.counts).forEach(function (k) {
      add(dl, add(el('div'), el('dt', null, k.replace(/_/g, ' ')), el('dd', null, s.counts[k])));
    });
    d.appendChild(dl);
    d.appendChild(el('p', 'fresh', 'Generated ' + s.generated_at + (s.commit ? ' · commit ' + s.commit : '') + ' · ' + str(s.source)));
    return d;
  }
  function renderTasks(list, limit) {
    if (!list.length) return empty('No tasks.');
    var rows = list.slice(0, limit || list.length).map(function (t) {
      var r = row([t.id, t.kind, badge('state', t.state), t.site, t.resource, t.correlation_id, str(t.attempts || 0),
        (t.allowed_actions || []).join(', '), t.runbook ? runbookLink(t.runbook) : '']);
      r.setAttribute('data-task', str(t.id));
      r.className = 'state-' + token(t.state);
      return r;
    });
    return table('tasks', ['Task', 'Kind', 'State', 'Site', 'Resource', 'Correlation', 'Attempts', 'Safe actions', 'Runbook'], rows);
  }
  var EVENT_KEYS = { task: 'task_id', correlation: 'correlation_id', causation: 'causation_id', resource: 'resource', tenant: 'tenant', site: 'site' };
  function eventFilter(region) {
    var id = region.getAttribute('data-filter');
    var form = id && document.getElementById(id);
    var f = {};
    if (form) Object.keys(EVENT_KEYS).forEach(function (k) {
      var v = form.elements[k] && form.elements[k].value.trim();
      if (v) f[k] = v;
    });
    return f;
  }
  function renderEvents(list, limit, region) {
    var f = region ? eventFilter(region) : {};
    var keys = Object.keys(f);
    var shown = list.filter(function (e) {
      return keys.every(function (k) { return str(e[EVENT_KEYS[k]]).indexOf(f[k]) !== -1; });
    });
    var count = document.getElementById('event-count');
    if (count && region && region.getAttribute('data-filter')) {
      count.textContent = keys.length ? shown.length + ' of ' + list.length + ' events match' : list.length + ' events';
    }
    if (!shown.length) return empty(keys.length ? 'No events match the filter.' : 'No events.');
    var rows = shown.slice(0, limit || shown.length).map(function (e) {
      var r = row([e.at, e.kind, e.message, e.task_id, e.correlation_id, e.causation_id, e.resource, e.tenant, e.site]);
      r.setAttribute('data-event', str(e.id));
      return r;
    });
    return table('events', ['At', 'Kind', 'Message', 'Task', 'Correlation', 'Causation', 'Resource', 'Tenant', 'Site'], rows);
  }
  function renderServices(list) {
    if (!list.length) return empty('No services.');
    return table('services', ['Site', 'Service', 'Status', 'Nodes up'], list.map(function (s) {
      return row([s.site, s.service_kind, badge('status', s.status), s.nodes_up + ' / ' + s.nodes_total]);
    }));
  }
  function renderNodes(list) {
    if (!list.length) return empty('No nodes.');
    return table('nodes', ['Node', 'Site', 'Service', 'Status', 'Version', 'Observed'], list.map(function (n) {
      return row([n.id, n.site, n.service_kind, badge('status', n.status), n.version, n.observed_version]);
    }));
  }
  function renderInventory(list) {
    if (!list.length) return empty('Nothing.');
    return table('inventory', ['Id', 'Kind', 'Site', 'Trust', 'Detail'], list.map(function (i) {
      return row([i.id, i.kind, i.site, badge('trust', i.trust), i.detail]);
    }));
  }
  function renderSites(list) {
    if (!list.length) return empty('No sites.');
    var wrap = el('div', 'cards');
    list.forEach(function (s) {
      var sec = el('section', 'card site');
      sec.setAttribute('aria-label', 'Site ' + str(s.id));
      add(sec, add(el('h3'), str(s.name) + ' ', el('small', null, str(s.id) + ' · ' + str(s.role)), ' ', badge('status', s.status)));
      var ul = el('ul', 'links');
      s.links.forEach(function (l) {
        var li = add(el('li'), '→ ' + str(l.to) + ' · ' + str(l.kind) + ' · ', badge('status', l.status),
          ' · ' + (typeof l.rtt_ms === 'number' ? 'rtt ' + l.rtt_ms + ' ms of ' : '') + 'max ' + str(l.max_rtt) +
          (l.last_seen_at ? ' · last answer ' + str(l.last_seen_at) : ''));
        li.setAttribute('data-link', str(s.id) + ':' + str(l.to) + ':' + str(l.kind));
        if (l.detail) add(li, ' ', el('small', 'link-detail', str(l.detail)));
        add(ul, li);
      });
      wrap.appendChild(add(sec, ul));
    });
    return wrap;
  }
  function renderFailovers(list) {
    if (!list.length) return empty('No recent failovers.');
    return table('failovers', ['At', 'Site', 'Scope', 'From', 'To', 'Reason', 'Correlation'], list.map(function (f) {
      return row([f.at, f.site, f.scope, f.from, f.to, f.reason, f.correlation_id]);
    }));
  }
  function renderDr(list) {
    if (!list.length) return empty('No stores.');
    return table('dr', ['Store', 'Class', 'RPO / RTO', 'Max backup age', 'Last successful backup', 'Recoverable now', 'Runbook'], list.map(function (s) {
      var r = row([add(el('span'), str(s.name) + ' ', el('small', null, s.id)), s.recovery_class, str(s.rpo) + ' / ' + str(s.rto),
        s.max_backup_age, s.last_success_at || 'not observed', badge('recoverable', s.recoverable), runbookLink(s.runbook)]);
      r.setAttribute('data-store', str(s.id));
      return r;
    }));
  }
  var RENDER = {
    decision: function (d) { return renderDecision(d); },
    conditions: function (d) { return renderConditions(d.conditions); },
    alerts: function (d) { return renderAlerts(d.alerts); },
    'alert-sources': function (d) { return renderAlertSources(d.alert_sources); },
    tasks: function (d, lim) { return renderTasks(d.tasks, lim); },
    events: function (d, lim, region) { return renderEvents(d.events, lim, region); },
    services: function (d) { return renderServices(d.services); },
    nodes: function (d) { return renderNodes(d.nodes); },
    'inventory-declared': function (d) { return renderInventory(d.declared); },
    'inventory-discovered': function (d) { return renderInventory(d.discovered); },
    sites: function (d) { return renderSites(d.sites); },
    failovers: function (d) { return renderFailovers(d.failovers); },
    'dr-stores': function (d) { return renderDr(d.stores); }
  };

  /* ---------- live refresh ---------- */
  var latest = {};
  function ago(ms) {
    var s = Math.round(ms / 1000);
    if (s < 120) return s + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    if (s < 172800) return Math.round(s / 3600) + ' h';
    return Math.round(s / 86400) + ' d';
  }
  function renderRegions(name) {
    var d = latest[name];
    if (!d) return;
    var regions = document.querySelectorAll('[data-live][data-snippet="' + name + '"]');
    Array.prototype.forEach.call(regions, function (region) {
      var f = RENDER[region.getAttribute('data-live')];
      if (!f) return;
      var lim = parseInt(region.getAttribute('data-limit'), 10) || 0;
      var node = f(d, lim, region);
      region.textContent = '';
      region.appendChild(node);
      region.setAttribute('data-source', 'live');
    });
  }
  function setBanners(problems) {
    var box = document.getElementById('live-status');
    if (!box) return;
    box.textContent = '';
    if (!problems.length) {
      var ok = el('p', 'banner live', 'Live: refreshed every ' + refreshMs / 1000 + ' s.');
      ok.setAttribute('data-banner', 'live');
      box.appendChild(ok);
      return;
    }
    var asked = false;
    problems.forEach(function (p) {
      if (p.kind === 'token') {
        // One banner for every snippet the token gates, with the form to enter it once.
        if (asked) return;
        asked = true;
      }
      var b = el('p', 'banner ' + p.kind, p.text);
      b.setAttribute('data-banner', p.kind);
      b.setAttribute('data-snippet', p.name);
      if (p.kind === 'token') b.appendChild(tokenForm());
      box.appendChild(b);
    });
  }
  /* The daemon's read token (vakt reconcile --snippets-token): asked once, kept in this browser. */
  var TOKEN_KEY = 'vakt.snippets-token';
  function readToken() {
    try { return window.localStorage.getItem(TOKEN_KEY) || ''; } catch (e) { return ''; }
  }
  function tokenForm() {
    var f = document.createElement('form');
    f.className = 'token-form';
    var input = document.createElement('input');
    input.type = 'password';
    input.name = 'token';
    input.autocomplete = 'off';
    input.setAttribute('aria-label', 'read token');
    input.placeholder = 'read token';
    var btn = document.createElement('button');
    btn.type = 'submit';
    btn.textContent = 'Use token';
    f.appendChild(input);
    f.appendChild(btn);
    f.addEventListener('submit', function (ev) {
      ev.preventDefault();
      try { window.localStorage.setItem(TOKEN_KEY, input.value.trim()); } catch (e) { /* private mode */ }
      refresh();
    });
    return f;
  }
  function fetchSnippet(name) {
    var opts = { cache: 'no-store', credentials: 'include' };
    var token = readToken();
    if (token) opts.headers = { 'Authorization': 'Bearer ' + token };
    return fetch(snippetsUrl + name + '.json', opts)
      .then(function (r) {
        if (r.status === 401) {
          return { name: name, kind: 'token', text: (token ? 'The read token kept in this browser was refused' : 'The live data needs the read token')
            + ' (the daemon runs with --snippets-token); showing the last known data. Ask an operator for the token and enter it here: ' };
        }
        if (!r.ok) return { name: name, kind: 'missing', text: 'Snippet ' + name + ' is unavailable (HTTP ' + r.status + '); showing the last known data.' };
        return r.text().then(function (t) {
          var d;
          try { d = JSON.parse(t); } catch (e) {
            return { name: name, kind: 'invalid', text: 'Snippet ' + name + ' is not valid JSON; showing the last known data.' };
          }
          var why = checkShape(name, d);
          if (why) return { name: name, kind: 'invalid', text: 'Snippet ' + name + ' is invalid (' + why + '); showing the last known data.' };
          latest[name] = d;
          renderRegions(name);
          var age = Date.now() - Date.parse(d.generated_at);
          if (age > staleMs) {
            return { name: name, kind: 'stale', text: 'Snippet ' + name + ' is stale: generated ' + ago(age) + ' ago (expected within ' + staleMs / 1000 + ' s).' };
          }
          return null;
        });
      }, function () {
        return { name: name, kind: 'missing', text: 'Snippet ' + name + ' could not be fetched; showing the last known data.' };
      });
  }
  var timer = null;
  function refresh() {
    if (!wanted.length || !window.fetch) return;
    if (timer) { window.clearTimeout(timer); timer = null; }
    Promise.all(wanted.map(fetchSnippet)).then(function (res) {
      setBanners(res.filter(Boolean));
    }).then(schedule, schedule);
  }
  function schedule() { if (!timer) timer = window.setTimeout(function () { timer = null; refresh(); }, refreshMs); }

  /* ---------- event filter ---------- */
  var filterForm = document.getElementById('event-filter');
  if (filterForm) {
    var params = new URLSearchParams(window.location.search);
    Object.keys(EVENT_KEYS).forEach(function (k) {
      if (params.get(k) && filterForm.elements[k]) filterForm.elements[k].value = params.get(k);
    });
    var refilter = function () {
      if (latest.events) { renderRegions('events'); return; }
      // no live data yet: filter the rows of the build-time snapshot
      Array.prototype.forEach.call(document.querySelectorAll('[data-filter] tr[data-event]'), function (tr) {
        var cells = tr.children, f = eventFilter(document.querySelector('[data-filter]'));
        var idx = { task: 3, correlation: 4, causation: 5, resource: 6, tenant: 7, site: 8 };
        tr.hidden = !Object.keys(f).every(function (k) { return cells[idx[k]].textContent.indexOf(f[k]) !== -1; });
      });
    };
    filterForm.addEventListener('input', refilter);
    filterForm.addEventListener('submit', function (e) { e.preventDefault(); refilter(); });
    refilter();
  }

  /* ---------- query templates prefilled by tenant, service or correlation id ---------- */
  var varsForm = document.getElementById('query-vars');
  if (varsForm) {
    var qp = new URLSearchParams(window.location.search);
    ['tenant', 'service', 'correlation_id'].forEach(function (k) { if (qp.get(k)) varsForm.elements[k].value = qp.get(k); });
    var prefill = function () {
      var given = {};
      ['tenant', 'service', 'correlation_id'].forEach(function (k) { var v = varsForm.elements[k].value.trim(); if (v) given[k] = v; });
      Array.prototype.forEach.call(document.querySelectorAll('article.query'), function (a) {
        var q = a.getAttribute('data-template');
        var ex = new URLSearchParams(a.getAttribute('data-examples') || '');
        q = q.replace(/\$\{([a-z][a-z0-9_]*)\}/g, function (m, name) {
          if (given[name]) return given[name].replace(/["\\]/g, '\\$&');
          if (name === 'tenant_id' && given.tenant) return given.tenant;
          if ((name === 'service' || name === 'metrics_service') && given.service) return given.service;
          return ex.get(name) !== null ? ex.get(name) : m;
        });
        a.querySelector('.query-text').textContent = q;
        var link = a.querySelector('a.explore');
        var g = a.getAttribute('data-grafana');
        if (link && g) {
          var uid = a.getAttribute('data-datasource');
          var left = { datasource: uid, queries: [{ refId: 'A', expr: q, datasource: { uid: uid } }], range: { from: 'now-1h', to: 'now' } };
          link.setAttribute('href', g.replace(/\/$/, '') + '/explore?left=' + encodeURIComponent(JSON.stringify(left)));
        }
      });
      Array.prototype.forEach.call(document.querySelectorAll('article.dashboard'), function (a) {
        var base = a.getAttribute('data-link'), link = a.querySelector('a.deep');
        if (!base || !link) return;
        var vars = (a.getAttribute('data-variables') || '').split(',');
        var qs = [];
        Object.keys(given).forEach(function (k) {
          if (vars.indexOf(k) !== -1) qs.push('var-' + k + '=' + encodeURIComponent(given[k]));
          else if (k === 'tenant' && vars.indexOf('tenant_id') !== -1) qs.push('var-tenant_id=' + encodeURIComponent(given[k]));
        });
        link.setAttribute('href', base + (qs.length ? '?' + qs.join('&') : ''));
      });
    };
    varsForm.addEventListener('input', prefill);
    prefill();
  }

  /* ---------- runbook search (index format: sitegen/src/search.rs) ---------- */
  var STOP = ['a', 'an', 'and', 'are', 'as', 'at', 'be', 'by', 'for', 'from', 'if', 'in', 'is', 'it', 'its', 'of', 'on', 'or', 'that', 'the', 'then', 'this', 'to', 'was', 'with', 'when', 'no', 'not'];
  function tokens(text) {
    return text.split(/[^\p{L}\p{N}]+/u).filter(function (w) {
      var n = Array.from(w).length; return n >= 2 && n <= 24;
    }).map(function (w) { return w.toLowerCase(); }).filter(function (w) { return STOP.indexOf(w) === -1; });
  }
  function fnv1a(s) {
    var bytes = new TextEncoder().encode(s), h = 0x811c9dc5;
    for (var i = 0; i < bytes.length; i++) { h ^= bytes[i]; h = Math.imul(h, 0x01000193) >>> 0; }
    return h >>> 0;
  }
  var cache = {};
  function getJson(path) {
    if (!cache[path]) cache[path] = fetch(root + 'search/' + path).then(function (r) {
      if (!r.ok) throw new Error('HTTP ' + r.status); return r.json();
    });
    return cache[path];
  }
  function postings(s) {
    var out = [], n = 0;
    if (!s) return out;
    s.split(',').forEach(function (d) { n += parseInt(d, 36); out.push(n); });
    return out;
  }
  function search(q, status, results) {
    var words = tokens(q);
    results.textContent = '';
    if (!words.length) { status.textContent = 'Type a word from a runbook.'; return; }
    status.textContent = 'Searching…';
    getJson('meta.json').then(function (meta) {
      return Promise.all(words.map(function (w) {
        return getJson('t-' + ((fnv1a(w) & (meta.shards - 1)) >>> 0) + '.json').then(function (sh) { return postings(sh[w]); });
      })).then(function (lists) {
        var hits = lists.reduce(function (acc, l) { return acc.filter(function (d) { return l.indexOf(d) !== -1; }); });
        var shown = hits.slice(0, 50);
        var chunks = {};
        shown.forEach(function (d) { chunks[Math.floor(d / meta.chunk)] = true; });
        return Promise.all(Object.keys(chunks).map(function (c) {
          return getJson('d-' + c + '.json').then(function (rows) { return [c, rows]; });
        })).then(function (loaded) {
          var byChunk = {};
          loaded.forEach(function (p) { byChunk[p[0]] = p[1]; });
          status.textContent = hits.length + (hits.length === 1 ? ' runbook matches' : ' runbooks match') + (hits.length > 50 ? ' (first 50 shown)' : '') + '.';
          shown.forEach(function (d) {
            var r = byChunk[Math.floor(d / meta.chunk)][d % meta.chunk];
            var li = el('li');
            var a = el('a', null, r[1]);
            a.setAttribute('href', root + 'runbooks/' + encodeURIComponent(r[0]) + '/');
            add(li, a, ' ', el('small', null, r[0] + ' · ' + r[2]));
            results.appendChild(li);
          });
        });
      });
    }).catch(function (e) { status.textContent = 'Search index unavailable: ' + e.message; });
  }
  var sform = document.getElementById('search-form');
  if (sform) {
    var input = sform.elements.q, status = document.getElementById('search-status'), results = document.getElementById('search-results');
    var initial = new URLSearchParams(window.location.search).get('q');
    if (initial) input.value = initial;
    sform.addEventListener('submit', function (e) { e.preventDefault(); search(input.value, status, results); });
    if (initial) search(initial, status, results);
  }

  /* ---------- live reload (vakt site serve --watch) ---------- */
  if (body.getAttribute('data-live-reload')) {
    var seen = null;
    var poll = function () {
      fetch(root + '__vakt/version', { cache: 'no-store' }).then(function (r) { return r.text(); }).then(function (v) {
        if (seen === null) seen = v; else if (v !== seen) { window.location.reload(); return; }
        window.setTimeout(poll, 1000);
      }, function () { window.setTimeout(poll, 2000); });
    };
    poll();
  }

  refresh();
})();
