/* The customer portal page: a portal token (from ?token=… or this tab's session) shows the holder's
   own usage for the current period, per meter, with a daily chart. */
"use strict";

(() => {
  const { el, query, formatNumber, formatTime } = TB;
  const STORAGE = "tallybook.portalToken";
  const root = document.getElementById("portal");

  // Embedded as a third-party iframe, the browser may deny storage; then the token lives in memory.
  const memory = new Map();
  const session = {
    get(name) {
      try { return sessionStorage.getItem(name); } catch (_) { return memory.get(name) || null; }
    },
    set(name, value) {
      try { sessionStorage.setItem(name, value); } catch (_) { memory.set(name, value); }
    },
    remove(name) {
      try { sessionStorage.removeItem(name); } catch (_) { memory.delete(name); }
    },
  };

  function takeToken() {
    const params = new URLSearchParams(location.search);
    const fromUrl = params.get("token");
    if (fromUrl) {
      session.set(STORAGE, fromUrl);
      // Keep the token out of the address bar and the history once it is stored for this tab.
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
      return fromUrl;
    }
    return session.get(STORAGE);
  }

  async function render() {
    const token = takeToken();
    if (!token) {
      root.replaceChildren(el("p", { class: "error", role: "alert" }, "This page needs a portal token: open it as /portal?token=…"));
      return;
    }
    const call = (path) => TB.api(token, "GET", path);
    let me;
    try {
      me = await call("/api/v1/portal/me");
    } catch (error) {
      session.remove(STORAGE);
      root.replaceChildren(el("p", { class: "error", role: "alert" }, `This usage link no longer works: ${error.message}`));
      return;
    }
    const zone = me.timeZone;
    const period = me.currentPeriod;
    const lastDay = new Date(new Date(period.to).getTime() - 1);
    const title = me.customer ? me.customer.name : me.subject;
    const cards = el("div", { id: "portal-meters" });
    root.replaceChildren(
      el("h1", { id: "portal-title" }, `Usage for ${title}`),
      el("p", { class: "muted" }, `Current period: ${formatTime(period.from, zone, "DAY")} – ${formatTime(lastDay.toISOString(), zone, "DAY")} (${zone})`),
      cards,
    );
    if (!me.meters.length) {
      cards.append(el("p", { class: "muted" }, "No meters are shared with you yet."));
      return;
    }
    // A meter in its first build answers 503 with its progress (docs/meters.md, "Rebuilds"): its card
    // says so and the other meters still show; one meter never blanks the page.
    const results = await Promise.all(me.meters.map((m) => {
      const base = `/api/v1/portal/meters/${encodeURIComponent(m.slug)}/query`;
      return Promise.all([
        call(base + query({ from: period.from, to: period.to })),
        call(base + query({ from: period.from, to: period.to, windowSize: "DAY", windowTimeZone: zone })),
      ]).catch((error) => {
        if (error.status === 503) return { rebuilding: error.problem && error.problem.projection };
        throw error;
      });
    }));
    me.meters.forEach((meter, i) => {
      if (results[i].rebuilding !== undefined) {
        const progress = results[i].rebuilding;
        cards.append(el("section", { class: "card meter-card rebuilding", "data-meter": meter.slug },
          el("h2", {}, meter.name),
          el("p", { class: "muted meter-rebuilding" },
            `Being recalculated${progress && progress.percent !== undefined ? ` (${progress.percent}% done)` : ""}: figures appear here when it is done.`)));
        return;
      }
      const [total, daily] = results[i];
      const sum = total.data.reduce((acc, row) => acc + Number(row.value), 0);
      const canvas = el("canvas", { "data-meter": meter.slug });
      cards.append(el("section", { class: "card meter-card", "data-meter": meter.slug },
        el("h2", {}, meter.name),
        meter.description ? el("p", { class: "muted" }, meter.description) : null,
        el("div", { class: "total" }, total.data.length ? formatNumber(sum) : "0"),
        el("p", { class: "muted" }, `${meter.aggregation.toLowerCase().replace("_", " ")} this period`),
        el("div", { class: "chart small" }, canvas)));
      const { starts, datasets } = TB.stackedSeries(daily.data, () => meter.name);
      TB.barChart(canvas, starts.map((s) => formatTime(s, zone, "DAY")), datasets, false);
    });
    await renderEntitlements(call, zone);
    await renderEstimate(call, zone);
    root.append(el("p", { class: "muted" }, `This link is valid until ${formatTime(me.expiresAt, zone)}.`));
  }

  /** What the customer may still use: access, balance and grants of each entitlement. */
  async function renderEntitlements(call, zone) {
    const found = await call("/api/v1/portal/entitlements");
    if (!found.entitlements.length) return;
    const num = (value) => (value === undefined ? "—" : formatNumber(value));
    root.append(el("section", { class: "card", id: "portal-entitlements" },
      el("h2", {}, "Your entitlements"),
      el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, "Feature"), el("th", {}, "Access"), el("th", { class: "num" }, "Used"),
          el("th", { class: "num" }, "Left"), el("th", {}, "Period"))),
        el("tbody", {}, found.entitlements.map((e) => el("tr", { "data-feature": e.featureKey },
          el("td", {}, e.featureKey, e.config ? el("div", { class: "muted" }, e.config) : null),
          el("td", {}, el("span", { class: `badge ${e.hasAccess ? "active" : "inactive"}` }, e.hasAccess ? "yes" : "no")),
          el("td", { class: "num" }, num(e.usage)),
          el("td", { class: "num entitlement-balance" }, num(e.balance)),
          el("td", {}, e.currentUsagePeriod ? `${formatTime(e.currentUsagePeriod.from, zone, "DAY")} – ${formatTime(new Date(new Date(e.currentUsagePeriod.to).getTime() - 1).toISOString(), zone, "DAY")}` : "—")))))));
  }

  /** The upcoming invoice, when this server bills (404 otherwise: the portal then shows usage only). */
  async function renderEstimate(call, zone) {
    let estimate;
    try {
      estimate = await call("/api/v1/portal/invoice-estimate");
    } catch (error) {
      if (error.status === 404) return;
      throw error;
    }
    // The last day shown is the one before `to` (periods end exclusively).
    const days = (period) => `${formatTime(period.from, zone, "DAY")} – ${formatTime(new Date(new Date(period.to).getTime() - 1).toISOString(), zone, "DAY")}`;
    const samePeriod = (a, b) => new Date(a.from).getTime() === new Date(b.from).getTime() && new Date(a.to).getTime() === new Date(b.to).getTime();
    for (const invoice of estimate.items) {
      const money = (amount) => TB.formatMoney(amount, invoice.currency);
      root.append(el("section", { class: "card", id: "invoice-estimate" },
        el("h2", {}, "Upcoming invoice (estimate)"),
        el("p", { class: "muted" }, days(invoice.period)),
        invoice.partial ? el("p", { class: "muted", id: "estimate-partial" }, "Only the items this link may show are listed; the invoice may hold more.") : null,
        el("table", {},
          el("thead", {}, el("tr", {}, el("th", {}, "Item"), el("th", { class: "num" }, "Quantity"), el("th", { class: "num" }, "Amount"))),
          el("tbody", {}, invoice.lines.map((line) => el("tr", {},
            // A fee billed in advance covers the next period, not the invoice's: say which.
            el("td", {}, line.name, line.period && !samePeriod(line.period, invoice.period) ? el("div", { class: "muted line-period" }, days(line.period)) : null),
            el("td", { class: "num" }, line.quantity === undefined ? "" : TB.formatDecimal(line.quantity)),
            el("td", { class: "num" }, money(line.amount))))),
          el("tfoot", {}, el("tr", {}, el("th", {}, invoice.partial ? "Total of the items shown" : "Total so far"), el("th", {}), el("th", { class: "num", id: "estimate-total" }, money(invoice.totals.total)))))));
    }
  }

  render();
})();
