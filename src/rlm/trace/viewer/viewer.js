// The rlm trace viewer: rebuilds the call tree from JSONL trace events and draws it.
// No dependencies.  Data comes either embedded (`rlm trace html`) or from the local server
// (`rlm trace view`), which serves the file's new lines from a byte offset (`--follow`).
"use strict";
(function () {
  const CONFIG = JSON.parse((document.getElementById("rlm-config") || {}).textContent || "{}");
  const KNOWN_MAJOR = 1;
  const S = { events: [], runs: [], nodes: new Map(), run: -1, selected: null, next: 0,
              collapsed: new Set(), pinnedRun: false, query: "" };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // -- figures ------------------------------------------------------------------------------
  const fmtInt = (n) => Math.round(n).toLocaleString("en-US");
  const fmtCost = (c) => "$" + c.toFixed(4);
  const fmtTime = (s) => (s === null || s === undefined ? "…" : s.toFixed(2) + "s");

  function addEvents(lines) {
    const warn = [];
    for (const line of lines) {
      if (!line.trim()) continue;
      let e;
      try { e = JSON.parse(line); } catch (err) { warn.push("a line is not JSON"); continue; }
      const major = parseInt(String(e.schema_version || "1.0").split(".")[0], 10);
      if (major > KNOWN_MAJOR) warn.push(`schema version ${e.schema_version} is newer than this viewer (${KNOWN_MAJOR}.x): upgrade rlm`);
      e.index = S.events.length;
      e.data = e.data || {};
      S.events.push(e);
      addToNode(e);
    }
    if (warn.length) $("warnings").textContent = [...new Set(warn)].join("; ");
  }

  function addToNode(e) {
    // A session file holds several trees whose seq restart: a run_start of a root opens a run.
    let node = S.nodes.get(e.run_id);
    if (!node) {
      node = { id: e.run_id, parent: e.parent_run_id, depth: e.depth, events: [], children: [],
               start: null, end: null, final: null };
      S.nodes.set(e.run_id, node);
      const parent = e.parent_run_id ? S.nodes.get(e.parent_run_id) : null;
      if (parent) parent.children.push(node);
      else S.runs.push(node);
    }
    node.events.push(e);
    if (e.type === "run_start") node.start = e;
    if (e.type === "run_end") node.end = e;
    if (e.type === "final") node.final = e;
  }

  function walk(node, out = []) { out.push(node); node.children.forEach((c) => walk(c, out)); return out; }

  function ownFigures(node) {
    let input = 0, output = 0, cost = 0, calls = 0;
    for (const e of node.events) {
      if (e.type !== "lm_call") continue;
      calls += 1; input += e.data.input_tokens || 0; output += e.data.output_tokens || 0;
      cost += e.data.cost_usd || 0;
    }
    return { input, output, cost, calls };
  }

  function figures(node) {
    const total = { input: 0, output: 0, cost: 0, calls: 0 };
    for (const n of walk(node)) {
      const own = ownFigures(n);
      for (const k in total) total[k] += own[k];
    }
    const iterations = Math.max(0, ...node.events.map((e) => e.iteration || 0));
    const elapsed = node.start && node.end ? node.end.ts - node.start.ts : null;
    let status = "running", cls = "st-running";
    if (node.end && node.end.data.error) { status = node.end.data.error.type || "error"; cls = "st-error"; }
    else if (node.final) {
      status = node.final.data.stop_reason || "final";
      cls = status === "final" ? "st-final" : "st-limit";
    } else if (node.end) { status = "ended"; cls = "st-limit"; }
    const model = node.start && node.start.data.backend ? node.start.data.backend.model || "" : "";
    return { ...total, tokens: total.input + total.output, iterations, elapsed, status, cls, model };
  }

  // -- highlighting -------------------------------------------------------------------------
  const PY = /(#[^\n]*)|("""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')|\b(False|None|True|and|as|assert|async|await|break|class|continue|def|del|elif|else|except|finally|for|from|global|if|import|in|is|lambda|nonlocal|not|or|pass|raise|return|try|while|with|yield)\b|\b(\d+(?:\.\d+)?)\b|\b([A-Za-z_]\w*)(?=\()/g;
  const KINDS = ["tok-com", "tok-str", "tok-kw", "tok-num", "tok-fn"];

  function highlight(code) {
    const pre = el("pre", { class: "code" });
    let last = 0;
    for (const m of code.matchAll(PY)) {
      if (m.index > last) pre.append(code.slice(last, m.index));
      const kind = KINDS[m.slice(1).findIndex((g) => g !== undefined)];
      pre.append(el("span", { class: kind }, m[0]));
      last = m.index + m[0].length;
    }
    pre.append(code.slice(last));
    return pre;
  }

  function replyBlock(text) {
    // A reply: prose, and ```repl / ```python blocks highlighted as code.
    const box = el("div", { class: "reply" });
    const parts = text.split(/```(?:repl|python|py)?\n?([\s\S]*?)```/g);
    parts.forEach((part, i) => {
      if (i % 2) box.append(highlight(part.replace(/\n$/, "")));
      else if (part.trim()) box.append(el("pre", { class: "prose" }, part.trim()));
    });
    return box;
  }

  // -- tree ---------------------------------------------------------------------------------
  function label(node) {
    const q = node.start && node.start.data.question;
    return q ? q.slice(0, 80) : node.depth === 0 ? "(root: the prompt is the input)" : node.id;
  }

  function renderTree() {
    const body = $("tree-body");
    body.replaceChildren();
    const root = S.runs[S.run];
    if (!root) return;
    const draw = (node, level) => {
      const f = figures(node);
      const open = !S.collapsed.has(node.id);
      const toggle = node.children.length
        ? el("span", { class: "toggle", "data-toggle": node.id, onclick: (ev) => {
            ev.stopPropagation();
            open ? S.collapsed.add(node.id) : S.collapsed.delete(node.id);
            renderTree();
          } }, open ? "▾" : "▸")
        : el("span", { class: "toggle" }, "");
      body.append(el("div", {
        class: "row node" + (S.selected === node.id ? " selected" : ""), "data-run-id": node.id,
        title: `own: ${ownFigures(node).calls} LM calls, ${fmtCost(ownFigures(node).cost)}`,
        onclick: () => select(node.id),
      },
      el("span", { class: "c-name", style: `padding-left:${level * 14}px` }, toggle, label(node)),
      el("span", { class: "c-depth" }, node.depth), el("span", { class: "c-model" }, f.model),
      el("span", { class: "c-status " + f.cls }, f.status), el("span", { class: "c-iter" }, f.iterations),
      el("span", { class: "c-tokens" }, fmtInt(f.tokens)), el("span", { class: "c-cost" }, fmtCost(f.cost)),
      el("span", { class: "c-time" }, fmtTime(f.elapsed))));
      if (open) node.children.forEach((c) => draw(c, level + 1));
    };
    draw(root, 0);
  }

  // -- a node's turns -----------------------------------------------------------------------
  function block(labelText, child, attrs) {
    return el("div", { class: "block", ...(attrs || {}) }, el("div", { class: "label" }, labelText), child);
  }

  function eventBlocks(e) {
    const d = e.data, id = "ev-" + e.index;
    if (e.type === "lm_call" && d.purpose === "turn") {
      return [block("reply", d.error ? el("pre", { class: "error" }, `${d.error.type}: ${d.error.message}`)
        : replyBlock(d.response || ""), { id })];
    }
    if (e.type === "lm_call") {
      return [block(`${d.purpose} · ${d.model} · ${fmtTime(d.latency_s)}`, el("div", {},
        el("pre", { class: "prompt" }, d.prompt || ""),
        d.error ? el("pre", { class: "error" }, `${d.error.type}: ${d.error.message}`)
          : el("pre", { class: "response" }, "→ " + (d.response || ""))), { id })];
    }
    if (e.type === "code_exec") {
      const out = [block("code", highlight(d.code || ""), { id, class: "block code-exec" })];
      if (d.stdout) out.push(block("output (fed back)", el("pre", { class: "stdout" }, d.stdout)));
      if (d.stderr) out.push(block("stderr", el("pre", { class: "stderr" }, d.stderr)));
      if (d.error) out.push(block("error (fed back)", el("pre", { class: "error" }, d.error)));
      if (d.final) out.push(block(`answer (${d.final.source})`, el("pre", { class: "final" }, d.final.text)));
      return out;
    }
    if (e.type === "note") {
      const rest = Object.entries(d).filter(([k]) => k !== "kind").map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`);
      return [block("feedback: " + d.kind, el("pre", { class: "note" }, rest.join("\n")), { id })];
    }
    if (e.type === "subcall_end") {
      return [block("batch", el("div", {}, `${d.op}: ${d.count} in parallel, ${d.failed} failed, ${fmtTime(d.elapsed_s)}`), { id })];
    }
    return [];
  }

  function renderDetail() {
    const body = $("detail-body");
    const node = S.nodes.get(S.selected);
    if (!node) return;
    const f = figures(node), own = ownFigures(node);
    const byTurn = new Map();
    for (const e of node.events) {
      if (!byTurn.has(e.iteration)) byTurn.set(e.iteration, []);
      byTurn.get(e.iteration).push(e);
    }
    const head = el("div", { class: "node-head" },
      el("h3", {}, label(node)),
      el("div", { class: "muted" }, `depth ${node.depth} · ${f.model} · `, el("span", { class: f.cls }, f.status),
        ` · ${f.iterations} turns · ${fmtTime(f.elapsed)}`),
      el("div", { class: "muted" }, `this node: ${own.calls} LM calls, ${fmtInt(own.input)}→${fmtInt(own.output)} tokens, ${fmtCost(own.cost)}`
        + ` · with its subtree: ${f.calls} calls, ${fmtInt(f.tokens)} tokens, ${fmtCost(f.cost)}`),
      node.parent && S.nodes.has(node.parent)
        ? el("div", {}, el("a", { onclick: () => select(node.parent) }, "↑ parent")) : null);
    const turns = [...byTurn.keys()].filter((i) => i > 0).sort((a, b) => a - b).map((i) => {
      const evs = byTurn.get(i);
      const lo = Math.min(...evs.map((e) => e.index)), hi = Math.max(...evs.map((e) => e.index));
      const kids = node.children.filter((c) => c.start && c.start.index > lo && c.start.index < hi);
      return el("div", { class: "turn", id: `turn-${node.id}-${i}` }, el("h3", {}, `Turn ${i}`),
        evs.flatMap(eventBlocks),
        kids.length ? block("children", el("div", {}, kids.map((c) =>
          el("div", {}, el("a", { class: "child-link", onclick: () => select(c.id) }, `d${c.depth} ${label(c)}`))))) : null);
    });
    const ending = [];
    if (node.final) ending.push(block(`final (${node.final.data.stop_reason})`, el("pre", { class: "final" }, node.final.data.response)));
    if (node.end && node.end.data.error) ending.push(block("ended with", el("pre", { class: "error" }, `${node.end.data.error.type}: ${node.end.data.error.message}`)));
    body.replaceChildren(head, ...turns, ...ending);
  }

  function select(id, eventIndex) {
    S.selected = id;
    const node = S.nodes.get(id);
    // expand the ancestors so the row is visible
    for (let p = node && node.parent; p; p = (S.nodes.get(p) || {}).parent) S.collapsed.delete(p);
    renderTree(); renderDetail();
    if (eventIndex !== undefined) {
      const target = document.getElementById("ev-" + eventIndex) || document.getElementById(eventIndex);
      if (target) { target.scrollIntoView({ block: "center" }); target.classList.add("flash"); }
    }
  }

  // -- answer and evidence --------------------------------------------------------------------
  function renderAnswer() {
    const root = S.runs[S.run], body = $("answer-body");
    if (!root) { body.replaceChildren(el("p", { class: "muted" }, "No events yet.")); return; }
    if (!root.final) { body.replaceChildren(el("p", { class: "muted" }, root.end ? "The run ended without an answer." : "Running…")); return; }
    const d = root.final.data;
    const items = (d.evidence || []).map((ev) => {
      const target = findEvidence(root, ev);
      const text = `${ev.kind} of turn ${ev.iteration}: ${String(ev.excerpt).slice(0, 160)}`;
      return el("li", {}, target ? el("a", { class: "evidence-link", onclick: () => select(root.id, target) }, text)
        : el("span", { class: "muted" }, ev.iteration === 0 ? `the question and context preview: ${String(ev.excerpt).slice(0, 120)}` : text));
    });
    body.replaceChildren(el("pre", { class: "final", id: "final-answer" }, d.response),
      el("div", { class: "muted" }, `stop reason: ${d.stop_reason} · source: ${d.answer_source}`),
      items.length ? el("div", {}, el("div", { class: "label muted" }, "evidence"), el("ul", { id: "evidence" }, items)) : null);
  }

  function findEvidence(node, ev) {
    const execs = node.events.filter((e) => e.type === "code_exec" && e.iteration === ev.iteration);
    const field = ev.kind === "code" ? "code" : "stdout";
    const hit = execs.find((e) => String(e.data[field] || "").includes(String(ev.excerpt).slice(0, 60)));
    if (hit) return hit.index;
    return execs.length ? execs[0].index : undefined;
  }

  // -- timeline and budget ------------------------------------------------------------------
  function span(root) {
    const nodes = walk(root);
    const t0 = Math.min(...nodes.map((n) => (n.start || n.events[0]).ts));
    const ends = S.events.filter((e) => nodes.includes(S.nodes.get(e.run_id))).map((e) => e.ts);
    const t1 = Math.max(t0 + 1e-3, ...ends);
    return { nodes, t0, t1 };
  }

  function renderTimeline() {
    const root = S.runs[S.run], body = $("timeline-body");
    if (!root) return;
    const { nodes, t0, t1 } = span(root);
    const pct = (t) => (100 * (t - t0)) / (t1 - t0);
    const rows = nodes.map((node) => {
      const start = (node.start || node.events[0]).ts;
      const end = node.end ? node.end.ts : t1;
      const track = el("div", { class: "tl-track" },
        el("div", { class: "tl-node", style: `left:${pct(start)}%;width:${pct(end) - pct(start)}%`, title: `${label(node)}: ${fmtTime(end - start)}` }));
      const lanes = [];
      for (const e of node.events) {
        if (e.type === "subcall_end") {
          const s = e.ts - (e.data.elapsed_s || 0);
          track.append(el("div", { class: "tl-batch", style: `left:${pct(s)}%;width:${pct(e.ts) - pct(s)}%`, title: `${e.data.op} × ${e.data.count}` }));
        }
        if (e.type !== "lm_call") continue;
        const s = e.ts - (e.data.latency_s || 0);
        let lane = lanes.findIndex((busy) => busy <= s + 1e-6);
        if (lane < 0) { lane = lanes.length; lanes.push(0); }
        lanes[lane] = e.ts;
        track.append(el("div", { class: "tl-call" + (e.data.purpose === "turn" ? "" : " sub"),
          style: `left:${pct(s)}%;width:${pct(e.ts) - pct(s)}%;top:${12 + 3 * Math.min(lane, 3)}px`,
          title: `${e.data.purpose} ${fmtTime(e.data.latency_s)}` }));
      }
      return el("div", { class: "tl-row", "data-run-id": node.id },
        el("span", { class: "tl-label", onclick: () => select(node.id), style: `padding-left:${node.depth * 8}px` }, `d${node.depth} ${label(node)}`), track);
    });
    body.replaceChildren(...rows, el("div", { class: "tl-axis" }, el("span", {}, "0s"), el("span", {}, fmtTime(t1 - t0))),
      el("div", { class: "legend" }, "bar: node · blue: its turns · orange: sub-calls · black line: a parallel batch"));
  }

  function chart(points, limit, t1, title, fmt) {
    const W = 400, H = 110, top = Math.max(limit || 0, points.length ? points[points.length - 1][1] : 0, 1e-9);
    const x = (t) => 30 + ((W - 40) * t) / t1, y = (v) => H - 14 - ((H - 24) * v) / top;
    const path = points.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.setAttribute("class", "chart");
    const add = (tag, attrs, text) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text) n.textContent = text;
      svg.append(n);
    };
    add("line", { x1: 30, y1: H - 14, x2: W - 10, y2: H - 14, stroke: "#ccc" });
    if (limit) add("line", { x1: 30, y1: y(limit), x2: W - 10, y2: y(limit), stroke: "#c0392b", "stroke-dasharray": "4 3" });
    if (limit) add("text", { x: W - 12, y: y(limit) - 3, "text-anchor": "end" }, `limit ${fmt(limit)}`);
    add("path", { d: path, fill: "none", stroke: "#2f6fdb", "stroke-width": 2 });
    add("text", { x: 30, y: 10 }, `${title}: ${fmt(points.length ? points[points.length - 1][1] : 0)}`);
    add("text", { x: W - 10, y: H - 2, "text-anchor": "end" }, fmtTime(t1));
    return svg;
  }

  function renderBudget() {
    const root = S.runs[S.run], body = $("budget-body");
    if (!root) return;
    const { nodes, t0, t1 } = span(root);
    const calls = S.events.filter((e) => e.type === "lm_call" && nodes.includes(S.nodes.get(e.run_id))).sort((a, b) => a.ts - b.ts);
    let cost = 0, tokens = 0;
    const costs = [[0, 0]], toks = [[0, 0]];
    for (const e of calls) {
      cost += e.data.cost_usd || 0; tokens += (e.data.input_tokens || 0) + (e.data.output_tokens || 0);
      costs.push([e.ts - t0, cost]); toks.push([e.ts - t0, tokens]);
    }
    const limits = (root.start && root.start.data.limits) || {};
    body.replaceChildren(chart(costs, limits.max_budget, t1 - t0, "cost", fmtCost),
      chart(toks, limits.max_tokens, t1 - t0, "tokens", fmtInt),
      el("div", { class: "legend", id: "limits" }, "limits: " + Object.entries(limits).map(([k, v]) => `${k}=${v === null ? "∞" : v}`).join(", ")));
  }

  // -- search -------------------------------------------------------------------------------
  const FIELDS = ["question", "response", "prompt", "code", "stdout", "stderr", "error", "message", "answer"];

  function renderSearch() {
    const q = S.query.trim().toLowerCase(), box = $("search-results"), list = $("hits");
    box.hidden = !q;
    if (!q) return;
    const hits = [];
    for (const e of S.events) {
      for (const f of FIELDS) {
        const v = e.data[f];
        const text = typeof v === "string" ? v : v && typeof v === "object" && v.message ? v.message : null;
        const at = text ? text.toLowerCase().indexOf(q) : -1;
        if (at < 0) continue;
        hits.push({ e, f, text, at });
        break;
      }
    }
    $("hit-count").textContent = `(${hits.length})`;
    list.replaceChildren(...hits.slice(0, 200).map(({ e, f, text, at }) => {
      const node = S.nodes.get(e.run_id);
      return el("li", { class: "hit", onclick: () => { const r = S.runs.indexOf(walkUp(node)); if (r !== S.run) setRun(r); select(node.id, e.index); } },
        el("b", {}, `d${node.depth} ${label(node).slice(0, 40)} · turn ${e.iteration} · ${e.type === "lm_call" ? e.data.purpose : e.type}.${f}: `),
        text.slice(Math.max(0, at - 40), at), el("mark", {}, text.slice(at, at + q.length)), text.slice(at + q.length, at + q.length + 60));
    }));
  }

  function walkUp(node) { while (node.parent && S.nodes.has(node.parent)) node = S.nodes.get(node.parent); return node; }

  // -- runs and refresh -----------------------------------------------------------------------
  function setRun(index) {
    S.run = index; S.selected = S.runs[index] ? S.runs[index].id : null;
    $("run-select").value = String(index);
    renderAll();
  }

  function renderRuns() {
    const sel = $("run-select");
    sel.replaceChildren(...S.runs.map((r, i) => el("option", { value: i }, `run ${i + 1} of ${S.runs.length}: ${label(r).slice(0, 50)}`)));
    sel.hidden = S.runs.length < 2;
    sel.value = String(S.run);
  }

  function renderAll() {
    renderRuns(); renderAnswer(); renderTree(); renderTimeline(); renderBudget(); renderSearch();
    if (S.selected) renderDetail();
    $("status").textContent = `${S.events.length} events · ${S.nodes.size} nodes` + (CONFIG.follow ? " · following" : "");
  }

  function ingest(lines) {
    const before = S.runs.length;
    addEvents(lines);
    if (S.runs.length !== before && !S.pinnedRun) S.run = S.runs.length - 1;  // the newest run
    if (S.run < 0 && S.runs.length) S.run = 0;
    if (!S.selected && S.runs[S.run]) S.selected = S.runs[S.run].id;
    if (S.selected && S.runs[S.run] && !walk(S.runs[S.run]).some((n) => n.id === S.selected)) S.selected = S.runs[S.run].id;
    renderAll();
  }

  async function poll() {
    try {
      const reply = await fetch(`${CONFIG.source}?from=${S.next}`, { cache: "no-store" });
      const body = await reply.json();
      if (body.reset) { S.events = []; S.runs = []; S.nodes = new Map(); S.run = -1; S.selected = null; }
      S.next = body.next;
      if (body.lines.length || body.reset) ingest(body.lines);
      document.body.dataset.loaded = "true";
    } catch (err) {
      $("status").textContent = "cannot reach the trace server";
    }
    if (CONFIG.follow) setTimeout(poll, CONFIG.interval_ms || 1000);
  }

  $("trace-name").textContent = CONFIG.name || "";
  $("run-select").addEventListener("change", (ev) => { S.pinnedRun = true; setRun(parseInt(ev.target.value, 10)); });
  let timer = null;
  $("search").addEventListener("input", (ev) => {
    clearTimeout(timer);
    timer = setTimeout(() => { S.query = ev.target.value; renderSearch(); }, 120);
  });
  if (CONFIG.lines) { ingest(CONFIG.lines); document.body.dataset.loaded = "true"; }
  else poll();
})();
