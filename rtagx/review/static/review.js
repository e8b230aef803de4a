// rtagx review: accept / reject tags, selections, keyboard shortcuts. No build step, no library.
// Every POST carries the session token in a header (a cross-site form cannot set one) and the
// browser adds the Origin header, which the server checks too.
(function () {
  "use strict";
  const token = document.querySelector('meta[name="rtagx-token"]').content;
  const status = document.getElementById("status");
  const say = (text) => { if (status) status.textContent = text; };

  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Rtagx-Token": token },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
    const data = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  }

  const cards = () => Array.from(document.querySelectorAll(".card[data-path]"));
  let focused = 0;
  function focusCard(n) {
    const all = cards();
    if (!all.length) return;
    focused = Math.max(0, Math.min(n, all.length - 1));
    all.forEach((c, i) => c.classList.toggle("focused", i === focused));
    all[focused].scrollIntoView({ block: "nearest" });
  }
  const selected = () => cards().filter((c) => c.querySelector("input.pick")?.checked);

  function show(card, decision, outcome) {
    const tag = card.dataset.tag;
    card.dataset.decision = String(decision);
    if (outcome) {
      if ((outcome.removed || []).some((k) => k.toLowerCase() === tag.toLowerCase())) card.dataset.written = "0";
      if ((outcome.added || []).some((k) => k.toLowerCase() === tag.toLowerCase())) card.dataset.written = "1";
      if (outcome.written !== undefined) card.dataset.written = outcome.written ? "1" : "0";
    }
    const state = card.querySelector(".state");
    if (state) state.textContent = decision > 0 ? "accepted" : decision < 0 ? "rejected" : (card.dataset.written === "1" ? "written" : "");
  }

  async function decide(targets, decision) {
    if (!targets.length) return;
    const byTag = new Map();
    targets.forEach((c) => { const t = c.dataset.tag; if (!byTag.has(t)) byTag.set(t, []); byTag.get(t).push(c); });
    const verb = decision > 0 ? "accepting" : decision < 0 ? "rejecting" : "forgetting";
    for (const [tag, group] of byTag) {
      say(verb + " '" + tag + "' on " + group.length + " photo(s)...");
      try {
        const data = await post("/api/decide", { tag: tag, decision: decision, paths: group.map((c) => c.dataset.path) });
        group.forEach((c) => show(c, decision, data.files[c.dataset.path]));
        say("done: " + data.summary);
      } catch (e) {
        say("refused: " + e.message);
        return;
      }
    }
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-decision]");
    if (b) {
      ev.preventDefault();
      const card = b.closest(".card[data-path]");
      if (b.dataset.scope === "selection") decide(selected(), Number(b.dataset.decision));
      else if (card) decide([card], Number(b.dataset.decision));
      return;
    }
    const add = ev.target.closest("button#add-tag");
    if (add) {
      ev.preventDefault();
      const row = add.closest("[data-path]");
      const tag = document.getElementById("add-tag-name").value;
      post("/api/add", { tag: tag, paths: [row.dataset.path] })
        .then(() => location.reload(), (e) => say("refused: " + e.message));
      return;
    }
    const apply = ev.target.closest("button#apply");
    if (apply) {
      ev.preventDefault();
      apply.disabled = true;
      say("applying...");
      post("/api/apply", {}).then((d) => { say("applied: " + d.summary); document.getElementById("plan").dataset.applied = "1"; },
                                  (e) => { say("refused: " + e.message); apply.disabled = false; });
    }
  });

  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, select, textarea") && ev.target.type !== "checkbox") return;
    const all = cards();
    if (!all.length) return;
    const targets = () => (selected().length ? selected() : [all[focused]]);
    switch (ev.key) {
      case "j": case "ArrowRight": focusCard(focused + 1); break;
      case "k": case "ArrowLeft": focusCard(focused - 1); break;
      case "x": { const p = all[focused].querySelector("input.pick"); if (p) p.checked = !p.checked; break; }
      case "a": decide(targets(), 1); break;
      case "r": decide(targets(), -1); break;
      case "u": decide(targets(), 0); break;
      case "Enter": { const a = all[focused].querySelector("a.open"); if (a) location.href = a.href; break; }
      default: return;
    }
    ev.preventDefault();
  });
  focusCard(0);
})();
