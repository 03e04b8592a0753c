/* The operator dashboard: a hash-routed page over Tallybook's JSON API (admin key in sessionStorage). */
"use strict";

(() => {
  const { el, query, formatNumber, formatTime } = TB;
  const KEY_STORAGE = "tallybook.apiKey";
  const page = document.getElementById("page");
  const localZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const ZONES = [...new Set(["UTC", localZone, "Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles", "Asia/Tokyo"])];
  let refreshTimer = null;
  let customerNames = new Map();
  let features = null;

  /** Optional parts of the API (invoices, Stripe) are found in the server's OpenAPI document. */
  async function loadFeatures() {
    if (features) return features;
    const response = await fetch("/openapi.json");
    const paths = response.ok ? (await response.json()).paths || {} : {};
    const getPath = (test) => Object.keys(paths).find((p) => paths[p].get && test(p)) || null;
    features = {
      invoices: getPath((p) => /^\/api\/v1\/(billing\/)?invoices$/.test(p)),
      stripeReports: getPath((p) => p === "/api/v1/stripe/reports"),
      customerApps: getPath((p) => p === "/api/v1/customers/{customerIdOrKey}/apps"),
      subscriptions: getPath((p) => p === "/api/v1/subscriptions"),
      invoiceHtml: getPath((p) => /^\/api\/v1\/(billing\/)?invoices\/\{[A-Za-z]+\}\/html$/.test(p)),
      invoicePdf: getPath((p) => /^\/api\/v1\/billing\/invoices\/\{[A-Za-z]+\}\/pdf$/.test(p)),
      unbilled: getPath((p) => p === "/api/v1/billing/unbilled"),
    };
    // Stripe's routes are always served; its sections show only when this server talks to Stripe.
    const overview = await TB.api(key(), "GET", "/api/v1/overview?minutes=1").catch(() => null);
    if (!(overview && overview.stripe && overview.stripe.enabled)) {
      features.stripeReports = null;
      features.customerApps = null;
    }
    const nav = document.getElementById("nav");
    for (const [name, label] of [["invoices", "Invoices"], ["unbilled", "Unbilled usage"], ["stripeReports", "Stripe reports"]]) {
      if (features[name] && !nav.querySelector(`[data-page="${name}"]`)) {
        nav.append(el("a", { href: `#/${name}`, "data-page": name }, label));
      }
    }
    return features;
  }

  const key = () => sessionStorage.getItem(KEY_STORAGE);
  // Each navigation starts a new generation; answers that arrive for an older page are dropped, so a
  // slow request can never paint over the page the user moved on to.
  let generation = 0;
  class Stale extends Error {}
  async function call(method, path, body) {
    const started = generation;
    const answer = await TB.api(key(), method, path, body);
    if (started !== generation) throw new Stale("navigated away");
    return answer;
  }

  // -- session --------------------------------------------------------------------------------------
  function showLogin(message) {
    document.getElementById("login").hidden = false;
    document.getElementById("nav").hidden = true;
    document.getElementById("logout").hidden = true;
    document.getElementById("login-error").textContent = message || "";
    page.replaceChildren();
  }

  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = document.getElementById("api-key").value.trim();
    if (!candidate) {
      document.getElementById("login-error").textContent = "Paste an admin API key (tbk_…). `tallybook keys create --scope admin` makes one.";
      return;
    }
    try {
      // Listing notification channels needs an admin key: it checks the key and its scope at once.
      await TB.api(candidate, "GET", "/api/v1/notification/channels?pageSize=1");
      sessionStorage.setItem(KEY_STORAGE, candidate);
      document.getElementById("api-key").value = "";
      route();
    } catch (error) {
      document.getElementById("login-error").textContent = error.message;
    }
  });

  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin("Signed out.");
  });

  // -- routing ----------------------------------------------------------------------------------------
  const routes = [
    [/^\/overview$/, overviewPage],
    [/^\/meters$/, metersPage],
    [/^\/meters\/([^/]+)$/, meterPage],
    [/^\/customers$/, customersPage],
    [/^\/customers\/([^/]+)$/, customerPage],
    [/^\/events$/, eventsPage],
    [/^\/deliveries$/, deliveriesPage],
    [/^\/invoices$/, invoicesPage],
    [/^\/invoices\/([^/]+)$/, invoicePage],
    [/^\/unbilled$/, unbilledPage],
    [/^\/stripeReports$/, () => apiListPage("Stripe usage reports", features.stripeReports)],
  ];

  async function route() {
    generation += 1;
    if (refreshTimer) clearInterval(refreshTimer);
    refreshTimer = null;
    if (!key()) return showLogin();
    document.getElementById("login").hidden = true;
    document.getElementById("nav").hidden = false;
    document.getElementById("logout").hidden = false;
    await loadFeatures();
    const [path, search] = (location.hash.slice(1) || "/overview").split("?");
    const params = new URLSearchParams(search || "");
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", path.startsWith(`/${link.dataset.page}`));
    }
    for (const [pattern, handler] of routes) {
      const match = pattern.exec(path);
      if (!match) continue;
      page.replaceChildren(el("p", { class: "muted" }, "Loading…"));
      try {
        await handler(params, ...match.slice(1).map(decodeURIComponent));
      } catch (error) {
        if (error instanceof Stale) return;
        if (error.status === 401 || error.status === 403) return showLogin(error.message);
        page.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
      }
      return;
    }
    location.hash = "#/overview";
  }
  window.addEventListener("hashchange", route);

  function setHash(path, params) {
    location.hash = `#${path}${query(params || {})}`;
  }

  async function loadCustomerNames() {
    const names = new Map();
    let pageNo = 1;
    for (;;) {
      const found = await call("GET", `/api/v1/customers${query({ page: pageNo, pageSize: 1000 })}`);
      for (const c of found.items) names.set(c.id, c.name);
      if (pageNo * found.pageSize >= found.totalCount) break;
      pageNo += 1;
    }
    customerNames = names;
    return names;
  }

  function customerLink(id) {
    if (!id) return el("span", { class: "muted" }, "(no customer)");
    return el("a", { href: `#/customers/${encodeURIComponent(id)}` }, customerNames.get(id) || id);
  }

  function stat(label, value, extraClass) {
    return el("div", { class: `stat ${extraClass || ""}` }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
  }

  function table(headers, rows) {
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : "" }, h.label || h)))),
      el("tbody", {}, rows));
  }

  // -- overview -----------------------------------------------------------------------------------------
  async function overviewPage() {
    const canvas = el("canvas", { id: "rate-chart" });
    const stats = el("div", { class: "grid", id: "ingest-stats" });
    const health = el("div", { class: "row" });
    page.replaceChildren(
      el("h1", {}, "Overview"),
      stats,
      el("div", { class: "card" }, el("h2", {}, "Events stored per minute (last hour, live)"), el("div", { class: "chart small" }, canvas)),
      health,
    );
    async function refresh() {
      const [data, jobs, failed, stripe] = await Promise.all([
        call("GET", "/api/v1/overview"), call("GET", "/api/v1/jobs"), call("GET", `/api/v1/jobs/failures${query({ limit: 20 })}`), stripeHealth()]);
      const ingest = data.ingest;
      const rejected = Object.values(ingest.rejected).reduce((a, b) => a + b, 0);
      const lastMinute = data.eventsPerMinute[data.eventsPerMinute.length - 1].events;
      const invalid = Object.values(data.invalidEventsByMeter).reduce((a, b) => a + b, 0);
      stats.replaceChildren(
        stat("Events this minute", formatNumber(lastMinute)),
        stat("Accepted (since start)", formatNumber(ingest.accepted)),
        stat("Duplicates", formatNumber(ingest.duplicateRetries + ingest.duplicateConflicts)),
        stat("Rejected (ingest errors)", formatNumber(rejected)),
        stat("Events meters could not use", formatNumber(invalid)),
      );
      TB.lineChart(canvas, data.eventsPerMinute.map((m) => formatTime(m.minute, localZone, "CLOCK")), data.eventsPerMinute.map((m) => m.events), "events");
      const states = data.webhooks.deliveries;
      const stateNames = Object.keys(states).sort();
      health.replaceChildren(
        el("div", { class: "card", id: "webhook-health" },
          el("h2", {}, "Webhook deliveries"),
          stateNames.length
            ? table(["State", { label: "Deliveries", num: true }], stateNames.map((s) => el("tr", {}, el("td", {}, el("span", { class: `badge ${s}` }, s)), el("td", { class: "num" }, formatNumber(states[s])))))
            : el("p", { class: "muted" }, "No webhook deliveries yet."),
          data.webhooks.disabledChannels.length
            ? el("div", {}, el("h2", {}, "Disabled channels"), el("ul", {}, data.webhooks.disabledChannels.map((c) => el("li", {}, `${c.name}: ${c.reason || "disabled"}`))))
            : null,
          el("p", {}, el("a", { href: "#/deliveries" }, "See deliveries →"))),
        el("div", { class: "card", id: "jobs-health" },
          el("h2", {}, "Background jobs"),
          table(["Job", "Last finished", "Last run", "Last error"], jobs.items.map((j) => el("tr", {},
            el("td", {}, j.name),
            el("td", {}, j.lastFinishedAt ? formatTime(j.lastFinishedAt, localZone) : "never"),
            el("td", {}, j.lastStatus ? el("span", { class: `badge ${JOB_STATUS_BADGE[j.lastStatus] || ""}` },
              j.lastStatus === "partial" ? `partial: ${formatNumber(j.lastFailedItems)} skipped` : j.lastStatus) : el("span", { class: "muted" }, "not run")),
            el("td", { class: j.lastError ? "error" : "muted" }, j.lastError || "none")))),
          rejected ? el("p", {}, "Rejected by reason: ", Object.entries(ingest.rejected).map(([r, n]) => `${r} ${n}`).join(", ")) : null,
          featureNote()),
        failedItems(failed),
        stripe,
      );
    }
    await refresh();
    refreshTimer = setInterval(() => refresh().catch(() => {}), 5000);
  }

  const JOB_STATUS_BADGE = { ok: "SUCCESS", partial: "PENDING", error: "FAILED" };

  /** Items a job skipped because they failed (GET /api/v1/jobs/failures): what, why, since when. */
  function failedItems(failed) {
    const context = (f) => Object.entries(f.context || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
    return el("div", { class: "card", id: "job-failures" },
      el("h2", {}, "Failed job items"),
      failed.items.length
        ? el("div", {},
          el("p", { class: "muted" }, "Each was skipped while its job went on with the others; it is retried on every run and leaves this list once it succeeds."),
          table(["Job", "Item", "Error", "First failed", "Last failed", { label: "Times", num: true }], failed.items.map((f) => el("tr", { class: "job-failure" },
            el("td", {}, f.job),
            el("td", {}, el("div", {}, `${f.itemKind} ${f.itemId}`), el("div", { class: "muted" }, context(f))),
            el("td", { class: "error" }, f.error),
            el("td", {}, formatTime(f.firstSeenAt, localZone)),
            el("td", {}, formatTime(f.lastSeenAt, localZone)),
            el("td", { class: "num" }, formatNumber(f.count))))),
          failed.totalCount > failed.items.length ? el("p", { class: "muted" }, `${formatNumber(failed.totalCount - failed.items.length)} more: GET /api/v1/jobs/failures`) : null)
        : el("p", { class: "muted" }, "None: every job processed all its items."));
  }

  /** Stripe usage reports by status, when this server reports to Stripe (null otherwise). */
  async function stripeHealth() {
    if (!features.stripeReports) return null;
    const statuses = ["PENDING", "SENT", "REJECTED", "OUT_OF_RANGE"];
    const counts = await Promise.all(statuses.map((status) => call("GET", `${features.stripeReports}${query({ status, pageSize: 1 })}`)));
    return el("div", { class: "card", id: "stripe-health" },
      el("h2", {}, "Stripe usage reports"),
      table(["Status", { label: "Reports", num: true }], statuses.map((status, i) => el("tr", {},
        el("td", {}, el("span", { class: `badge ${status === "SENT" ? "SUCCESS" : status === "PENDING" ? "PENDING" : "FAILED"}` }, status)),
        el("td", { class: "num" }, formatNumber(counts[i].totalCount))))),
      el("p", {}, el("a", { href: "#/stripeReports" }, "See reports →")));
  }

  function featureNote() {
    const missing = [];
    if (!features.invoices) missing.push("invoices");
    if (!features.stripeReports) missing.push("Stripe usage reports");
    if (!missing.length) return null;
    return el("p", { class: "muted" }, `This server has no ${missing.join(" or ")} yet; those sections appear once the feature is enabled.`);
  }

  // -- meters ---------------------------------------------------------------------------------------------
  async function metersPage() {
    const meters = await call("GET", "/api/v1/meters");
    const projections = await Promise.all(meters.map((m) => call("GET", `/api/v1/meters/${encodeURIComponent(m.slug)}/projection`)));
    const projectionText = (p) => (p.state === "ready" ? "ready" : `rebuilding, ${p.percent}%`);
    page.replaceChildren(
      el("h1", {}, "Meters"),
      meters.length
        ? table(["Slug", "Name", "Event type", "Aggregation", "Group by", { label: "Invalid events", num: true }, "Projection"],
          meters.map((m) => el("tr", { class: "clickable", onclick: () => setHash(`/meters/${m.slug}`) },
            el("td", {}, el("a", { href: `#/meters/${encodeURIComponent(m.slug)}` }, m.slug)),
            el("td", {}, m.name),
            el("td", {}, el("code", {}, m.eventType)),
            el("td", {}, m.aggregation),
            el("td", {}, Object.keys(m.groupBy).join(", ") || "—"),
            el("td", { class: "num" }, formatNumber(m.annotations["tallybook.invalidEvents"] || 0)),
            el("td", {}, projectionText(projections[meters.indexOf(m)])))))
        : el("p", { class: "muted" }, "No meters yet. Create one with POST /api/v1/meters or in tallybook.yaml."),
    );
  }

  const RANGES = { "24h": 1, "7d": 7, "30d": 30, "90d": 90, "365d": 365 };

  /** The meter's projection while a new or changed definition is built (docs/meters.md, "Rebuilds"). */
  function projectionCard(p) {
    const answers = {
      previous: "Queries answer from the previous definition until the rebuild is swapped in.",
      none: "A new meter: its usage can be queried once this first build is done.",
      current: "",
    }[p.answersFrom];
    const eta = p.etaSeconds === null ? "" : `, about ${p.etaSeconds} s left`;
    return el("div", { class: "card", id: "meter-projection" },
      el("h2", {}, "Rebuilding"),
      el("progress", { max: 100, value: p.percent }),
      el("p", {}, `${p.percent}% — ${formatNumber(p.eventsProcessed)} of ${formatNumber(p.eventsTotal)} stored events read${eta} (started ${formatTime(p.startedAt, localZone)}).`),
      el("p", { class: "muted" }, answers));
  }

  async function meterPage(params, slug) {
    const [meter, projection] = await Promise.all([
      call("GET", `/api/v1/meters/${encodeURIComponent(slug)}`),
      call("GET", `/api/v1/meters/${encodeURIComponent(slug)}/projection`),
      loadCustomerNames(),
    ]);
    const state = {
      range: RANGES[params.get("range")] ? params.get("range") : "30d",
      windowSize: ["MINUTE", "HOUR", "DAY", "MONTH"].includes(params.get("window")) ? params.get("window") : "DAY",
      zone: TB.validZone(params.get("tz") || "") ? params.get("tz") : "UTC",
      stack: params.get("stack") || "customer_id",
    };
    const stackChoices = [["", "nothing (total)"], ["customer_id", "customer"], ["subject", "subject"], ...Object.keys(meter.groupBy).map((k) => [k, k])];
    const select = (id, choices, value) => el("select", { id, onchange: apply }, choices.map(([v, label]) => el("option", { value: v, selected: v === value }, label)));
    const zoneInput = el("input", { id: "tz", list: "zones", value: state.zone, size: 18, onchange: apply });
    function apply() {
      const zone = zoneInput.value.trim();
      setHash(`/meters/${slug}`, {
        range: document.getElementById("range").value,
        window: document.getElementById("window").value,
        tz: TB.validZone(zone) ? zone : "UTC",
        stack: document.getElementById("stack").value,
      });
    }
    const canvas = el("canvas", { id: "meter-chart" });
    const top = el("div", { id: "top-customers" });
    const status = el("p", { class: "muted", id: "chart-status" });
    const rebuilding = projection.state === "rebuilding" ? projectionCard(projection) : "";
    if (projection.answersFrom === "none") {
      page.replaceChildren(
        el("h1", {}, `${meter.name} `, el("span", { class: "muted" }, `(${meter.slug})`)),
        rebuilding,
        el("div", { class: "card" }, el("h2", {}, "Definition"), el("pre", { id: "meter-definition" }, JSON.stringify(meter, null, 2))));
      return;
    }
    page.replaceChildren(
      el("h1", {}, `${meter.name} `, el("span", { class: "muted" }, `(${meter.slug})`)),
      rebuilding,
      el("div", { class: "row" },
        el("div", { class: "card" }, el("h2", {}, "Definition"), el("pre", { id: "meter-definition" }, JSON.stringify(meter, null, 2))),
        el("div", { class: "card" }, el("h2", {}, "Top customers"), top)),
      el("div", { class: "card" },
        el("h2", {}, "Usage"),
        el("div", { class: "controls" },
          el("span", {}, el("label", { for: "range" }, "Range"), select("range", Object.keys(RANGES).map((r) => [r, `last ${r}`]), state.range)),
          el("span", {}, el("label", { for: "window" }, "Window"), select("window", ["MINUTE", "HOUR", "DAY", "MONTH"].map((w) => [w, w]), state.windowSize)),
          el("span", {}, el("label", { for: "tz" }, "Time zone"), zoneInput, el("datalist", { id: "zones" }, ZONES.map((z) => el("option", { value: z })))),
          el("span", {}, el("label", { for: "stack" }, "Stack by"), select("stack", stackChoices, state.stack))),
        el("div", { class: "chart" }, canvas),
        status),
    );

    const now = new Date();
    const from = TB.windowStart(state.windowSize, state.zone, new Date(now.getTime() - RANGES[state.range] * 86400000));
    // Up to the end of the current window: without `to` a query also counts future-dated events.
    const to = TB.windowEnd(state.windowSize, state.zone, now);
    const base = `/api/v1/meters/${encodeURIComponent(slug)}/query`;
    const [series, totals] = await Promise.all([
      call("GET", base + query({ from: from.toISOString(), to: to.toISOString(), windowSize: state.windowSize, windowTimeZone: state.zone, groupBy: state.stack || null })),
      call("GET", base + query({ from: from.toISOString(), to: to.toISOString(), groupBy: "customer_id" })),
    ]);
    const seriesName = (row) => {
      if (!state.stack) return meter.name;
      if (state.stack === "customer_id") return row.customerId ? customerNames.get(row.customerId) || row.customerId : "(no customer)";
      if (state.stack === "subject") return row.subject || "(none)";
      return row.groupBy[state.stack] ?? "(none)";
    };
    const { starts, datasets } = TB.stackedSeries(series.data, seriesName);
    TB.barChart(canvas, starts.map((s) => formatTime(s, state.zone, state.windowSize)), datasets, true);
    status.textContent = series.data.length
      ? `${series.data.length} rows from ${formatTime(series.from, state.zone)} to ${formatTime(series.to, state.zone)} (${state.zone})`
      : "No usage in this range.";
    canvas.dataset.rows = String(series.data.length);
    const ranked = totals.data.slice().sort((a, b) => Number(b.value) - Number(a.value)).slice(0, 10);
    top.replaceChildren(ranked.length
      ? table(["Customer", { label: `Usage, last ${state.range}`, num: true }], ranked.map((r) => el("tr", {}, el("td", {}, customerLink(r.customerId)), el("td", { class: "num" }, formatNumber(r.value)))))
      : el("p", { class: "muted" }, "No usage in this range."));
  }

  // -- customers --------------------------------------------------------------------------------------------
  async function customersPage(params) {
    const name = params.get("name") || "";
    const found = await call("GET", `/api/v1/customers${query({ name, pageSize: 200, orderBy: "name" })}`);
    const search = el("input", { id: "customer-search", value: name, placeholder: "name contains…" });
    page.replaceChildren(
      el("h1", {}, "Customers"),
      el("form", { class: "controls", onsubmit: (e) => { e.preventDefault(); setHash("/customers", { name: search.value.trim() }); } },
        search, el("button", { type: "submit" }, "Search"), el("span", { class: "muted" }, `${found.totalCount} customer(s)`)),
      found.items.length
        ? table(["Name", "Key", "Subjects", "Email", "Currency", "Created"], found.items.map((c) => el("tr", { class: "clickable", onclick: () => setHash(`/customers/${c.id}`) },
          el("td", {}, el("a", { href: `#/customers/${encodeURIComponent(c.id)}` }, c.name)),
          el("td", {}, c.key || "—"),
          el("td", {}, c.usageAttribution.subjectKeys.join(", ") || "—"),
          el("td", {}, c.primaryEmail || "—"),
          el("td", {}, c.currency || "—"),
          el("td", {}, formatTime(c.createdAt, localZone, "DAY")))))
        : el("p", { class: "muted" }, "No customers match."),
    );
  }

  function monthBounds(zone, monthsBack) {
    const w = TB.wallClock(zone, new Date());
    let year = w.year;
    let month = w.month - monthsBack;
    while (month < 1) { month += 12; year -= 1; }
    return TB.windowStart("MONTH", zone, new Date(Date.UTC(year, month - 1, 15)));
  }

  /** The customer's entitlements: access, balance, usage, and each metered one's grants. */
  async function entitlementsOf(customer, zone) {
    const base = `/api/v2/customers/${encodeURIComponent(customer.id)}/entitlements`;
    const [listed, access] = await Promise.all([call("GET", base), call("GET", `/api/v1/customers/${encodeURIComponent(customer.id)}/access`)]);
    const card = el("div", { class: "card", id: "customer-entitlements" }, el("h2", {}, "Entitlements"));
    if (!listed.items.length) {
      card.append(el("p", { class: "muted" }, "No entitlements."));
      return card;
    }
    const num = (value) => (value === undefined ? "—" : formatNumber(value));
    const grants = await Promise.all(listed.items.map((e) => (e.type === "metered" ? call("GET", `${base}/${encodeURIComponent(e.id)}/grants${query({ includeDeleted: "true" })}`) : null)));
    card.append(table(["Feature", "Type", "Access", { label: "Balance", num: true }, { label: "Usage", num: true }, { label: "Overage", num: true }, "Period"],
      listed.items.map((e) => {
        const value = access.entitlements[e.featureKey] || {};
        return el("tr", { "data-feature": e.featureKey },
          el("td", {}, e.featureKey),
          el("td", {}, e.type, e.isSoftLimit ? el("div", { class: "muted" }, "soft limit") : null),
          el("td", {}, el("span", { class: `badge ${value.hasAccess ? "active" : "inactive"}` }, value.hasAccess ? "yes" : "no")),
          el("td", { class: "num" }, num(value.balance)),
          el("td", { class: "num" }, num(value.usage)),
          el("td", { class: "num" }, num(value.overage)),
          el("td", {}, e.currentUsagePeriod ? periodText(e.currentUsagePeriod, zone) : "—"));
      })));
    listed.items.forEach((e, i) => {
      const items = grants[i] ? grants[i].items : [];
      if (!items.length) return;
      card.append(el("h3", {}, `Grants: ${e.featureKey}`),
        table([{ label: "Amount", num: true }, "Priority", "Effective", "Expires", "Rollover (min–max)", "Voided"], items.map((g) => el("tr", { "data-grant": g.id },
          el("td", { class: "num" }, formatNumber(g.amount)),
          el("td", {}, String(g.priority)),
          el("td", {}, formatTime(g.effectiveAt, zone)),
          el("td", {}, g.expiresAt ? formatTime(g.expiresAt, zone) : "never"),
          el("td", {}, `${formatNumber(g.minRolloverAmount)}–${formatNumber(g.maxRolloverAmount)}`),
          el("td", {}, g.voidedAt ? formatTime(g.voidedAt, zone) : "—")))));
    });
    return card;
  }

  async function customerPage(params, id) {
    const [customer, meters] = await Promise.all([call("GET", `/api/v1/customers/${encodeURIComponent(id)}`), call("GET", "/api/v1/meters")]);
    const zone = customer.timezone || "UTC";
    const previous = monthBounds(zone, 1);
    // A meter in its first build answers 503 (docs/meters.md, "Rebuilds"): no figures for it yet.
    const usage = await Promise.all(meters.map((m) => call("GET", `/api/v1/meters/${encodeURIComponent(m.slug)}/query${query({
      from: previous.toISOString(), to: TB.windowEnd("MONTH", zone, new Date()).toISOString(), windowSize: "MONTH", windowTimeZone: zone, filterCustomerId: customer.id })}`)
      .catch((e) => { if (e.status === 503) return { data: [] }; throw e; })));
    const current = monthBounds(zone, 0).toISOString();
    const valueIn = (result, startIso) => {
      const row = result.data.find((r) => new Date(r.windowStart).getTime() === new Date(startIso).getTime());
      return row ? formatNumber(row.value) : "0";
    };
    const billing = [];
    if (features.subscriptions) {
      const subs = await call("GET", `${features.subscriptions}${query({ customerId: customer.id })}`);
      const items = Array.isArray(subs) ? subs : subs.items || [];
      billing.push(el("div", { class: "card", id: "customer-subscriptions" }, el("h2", {}, "Subscriptions"),
        items.length
          ? table(["Plan", "Status", "Cadence", "Active from", "Active to", "Current period"], items.map((sub) => el("tr", { "data-subscription": sub.id },
            el("td", {}, `${sub.plan.key} v${sub.plan.version}`, el("div", { class: "muted" }, sub.name || "")),
            el("td", {}, el("span", { class: `badge ${sub.status}` }, sub.status)),
            el("td", {}, `${sub.billingCadence} (${sub.alignment})`),
            el("td", {}, formatTime(sub.activeFrom, zone, "DATE")),
            el("td", {}, sub.activeTo ? formatTime(sub.activeTo, zone, "DATE") : "—"),
            el("td", {}, sub.currentPeriod ? periodText(sub.currentPeriod, zone) : "—"))))
          : el("p", { class: "muted" }, "No subscriptions.")));
    }
    if (features.invoices) {
      const invoices = await call("GET", `${features.invoices}${query({ customerId: customer.id })}`);
      const items = Array.isArray(invoices) ? invoices : invoices.items || [];
      billing.push(el("div", { class: "card", id: "customer-invoices" }, el("h2", {}, "Invoices"),
        items.length ? invoiceTable(items, false) : el("p", { class: "muted" }, "No invoices yet."),
        el("p", {}, el("a", { href: "#/invoices" }, "All invoices →"))));
    }
    const entitlementsCard = await entitlementsOf(customer, zone);
    const portalOut = el("div", { id: "portal-link" });
    let stripeCard = null;
    if (features.customerApps) {
      // The list answers 200 with no items for an unlinked customer (no 404 in the browser's log).
      const apps = await call("GET", `/api/v1/customers/${encodeURIComponent(customer.id)}/apps${query({ type: "stripe" })}`);
      const stripe = apps.items[0];
      stripeCard = el("div", { class: "card", id: "customer-stripe" }, el("h2", {}, "Stripe"),
        stripe
          ? el("dl", { class: "props" }, Object.entries(stripe).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, cellValue(v))]))
          : el("p", { class: "muted" }, "Not linked to Stripe."));
    }
    async function issuePortalToken() {
      const token = await call("POST", "/api/v1/portal/tokens", { customerId: customer.id });
      const url = `${location.origin}/portal?token=${encodeURIComponent(token.token)}`;
      portalOut.replaceChildren(
        el("p", {}, `Portal link (valid until ${formatTime(token.expiresAt, localZone)}; shown once): `, el("a", { href: url, target: "_blank", rel: "noopener noreferrer", id: "portal-url" }, "open portal")),
        el("pre", {}, `<iframe src="${url}" width="100%" height="640" style="border:0"></iframe>\n\n<script src="${location.origin}/ui/static/embed.js"></script>\n<tallybook-usage server="${location.origin}" token="${token.token}"></tallybook-usage>`));
    }
    const props = [
      ["Id", customer.id], ["Key", customer.key || "—"], ["Subjects", customer.usageAttribution.subjectKeys.join(", ") || "—"],
      ["Email", customer.primaryEmail || "—"], ["Currency", customer.currency || "—"], ["Time zone", zone],
      ["Created", formatTime(customer.createdAt, localZone)],
    ];
    page.replaceChildren(
      el("h1", {}, customer.name),
      el("div", { class: "row" },
        el("div", { class: "card" }, el("h2", {}, "Customer"), el("dl", { class: "props" }, props.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
          el("p", {}, el("a", { href: `#/events${query({ customer: customer.id })}` }, "Events of this customer →"))),
        el("div", { class: "card" }, el("h2", {}, "Customer portal"),
          el("p", { class: "muted" }, "A portal token lets this customer see only its own usage."),
          el("button", { type: "button", id: "issue-portal-token", onclick: () => issuePortalToken().catch((e) => portalOut.replaceChildren(el("p", { class: "error" }, e.message))) }, "Create portal link"),
          portalOut),
        stripeCard),
      entitlementsCard,
      el("div", { class: "card", id: "customer-usage" }, el("h2", {}, `Usage per meter (calendar months, ${zone})`),
        table(["Meter", "Aggregation", { label: "This month", num: true }, { label: "Last month", num: true }],
          meters.map((m, i) => el("tr", {},
            el("td", {}, el("a", { href: `#/meters/${encodeURIComponent(m.slug)}` }, m.name)),
            el("td", {}, m.aggregation),
            el("td", { class: "num" }, valueIn(usage[i], current)),
            el("td", { class: "num" }, valueIn(usage[i], previous.toISOString())))))),
      billing.length ? el("div", { class: "row" }, billing) : null,
    );
  }

  // -- events explorer -----------------------------------------------------------------------------------------
  function isoOrEmpty(localValue) {
    return localValue ? new Date(localValue).toISOString() : "";
  }

  async function eventsPage(params, notice) {
    await loadCustomerNames();
    const customers = [...customerNames.entries()].sort((a, b) => a[1].localeCompare(b[1]));
    const form = el("form", { class: "controls", id: "event-filters" },
      el("span", {}, el("label", { for: "f-customer" }, "Customer"), el("select", { id: "f-customer", name: "customer" },
        el("option", { value: "" }, "any"), customers.map(([cid, n]) => el("option", { value: cid, selected: params.get("customer") === cid }, n)))),
      el("span", {}, el("label", { for: "f-subject" }, "Subject"), el("input", { id: "f-subject", name: "subject", value: params.get("subject") || "", size: 12 })),
      el("span", {}, el("label", { for: "f-type" }, "Type"), el("input", { id: "f-type", name: "type", value: params.get("type") || "", size: 12 })),
      el("span", {}, el("label", { for: "f-from" }, "From"), el("input", { id: "f-from", name: "from", type: "datetime-local", value: params.get("from") || "" })),
      el("span", {}, el("label", { for: "f-to" }, "To"), el("input", { id: "f-to", name: "to", type: "datetime-local", value: params.get("to") || "" })),
      el("span", {}, el("input", { id: "f-voided", name: "voided", type: "checkbox", value: "1", checked: params.get("voided") === "1" }), el("label", { for: "f-voided" }, "Show voided")),
      el("button", { type: "submit" }, "Filter"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const data = new FormData(form);
      setHash("/events", Object.fromEntries([...data.entries()].filter(([, v]) => v)));
    });
    const detail = el("div", { class: "card", id: "event-detail", hidden: true });
    const listing = el("div", { class: "card" });
    page.replaceChildren(el("h1", {}, "Events"), form, notice ? el("p", { id: "events-notice" }, notice) : "", el("div", { class: "row" }, listing, detail));

    const filters = {
      type: params.get("type"), from: isoOrEmpty(params.get("from")), to: isoOrEmpty(params.get("to")), limit: 100,
      includeVoided: params.get("voided") === "1" ? "true" : "",
    };
    let subjects = [params.get("subject") || null];
    if (params.get("customer")) {
      const customer = await call("GET", `/api/v1/customers/${encodeURIComponent(params.get("customer"))}`);
      const attributed = [...new Set([...customer.usageAttribution.subjectKeys, ...(customer.key ? [customer.key] : [])])];
      subjects = params.get("subject") ? attributed.filter((s) => s === params.get("subject")) : attributed;
    }
    const pages = subjects.length ? await Promise.all(subjects.map((s) => call("GET", `/api/v1/events${query({ ...filters, subject: s })}`))) : [];
    const found = pages.flat().sort((a, b) => (a.event.time < b.event.time ? 1 : -1)).slice(0, 100);
    function show(item, row) {
      for (const r of listing.querySelectorAll("tr.selected")) r.classList.remove("selected");
      row.classList.add("selected");
      detail.hidden = false;
      detail.replaceChildren(
        el("h2", {}, `Event ${item.event.id}`),
        item.validationError ? el("p", { class: "error", id: "validation-error" }, `Validation error: ${item.validationError}`) : el("p", { class: "muted" }, "Every meter could use this event."),
        el("p", { class: "muted" }, `Ingested ${formatTime(item.ingestedAt, localZone)}`),
        item.voidedAt
          ? el("p", { class: "error", id: "voided-note" }, `Voided ${formatTime(item.voidedAt, localZone)} (void ${item.voidId}): it no longer counts.`)
          : voidForm(item),
        el("pre", { id: "event-json" }, JSON.stringify(item.event, null, 2)));
    }
    // Voiding takes the event out of every meter from now on (queries as of earlier still count it);
    // the reason goes into the audit trail, so it is required.
    function voidForm(item) {
      const reason = el("input", { id: "void-reason", name: "reason", required: true, size: 30, placeholder: "why (kept in the audit trail)" });
      const message = el("p", { id: "void-message" });
      const form = el("form", { id: "void-form", class: "controls" },
        el("span", {}, el("label", { for: "void-reason" }, "Reason"), reason),
        el("button", { type: "submit", class: "secondary" }, "Void event"), message);
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        if (!reason.value.trim()) {
          message.replaceChildren(el("span", { class: "error" }, "Say why this event is voided."));
          return;
        }
        const body = { events: [{ source: item.event.source, id: item.event.id }], reason: reason.value.trim() };
        try {
          const record = await call("POST", "/api/v1/events/void", body);
          await eventsPage(params, `Event ${item.event.id} voided (void ${record.id}); it no longer counts in any meter.`);
        } catch (error) {
          if (error instanceof Stale) return;
          message.replaceChildren(el("span", { class: "error" }, error.message));
        }
      });
      return form;
    }
    listing.replaceChildren(found.length
      ? table(["Time", "Type", "Subject", "Id", "", ""], found.map((item) => {
        const row = el("tr", { class: item.voidedAt ? "clickable voided" : "clickable", "data-event-id": item.event.id },
          el("td", {}, formatTime(item.event.time, localZone)),
          el("td", {}, item.event.type),
          el("td", {}, item.event.subject),
          el("td", {}, el("code", {}, item.event.id)),
          el("td", {}, item.voidedAt ? el("span", { class: "badge void" }, "voided") : item.validationError ? el("span", { class: "badge invalid" }, "invalid") : ""),
          el("td", {}, item.voidedAt ? "" : el("button", {
            type: "button", class: "secondary void-event",
            onclick: (e) => { e.stopPropagation(); show(item, row); document.getElementById("void-reason").focus(); },
          }, "Void…")));
        row.addEventListener("click", () => show(item, row));
        return row;
      }))
      : el("p", { class: "muted" }, "No events match."));
  }

  // -- webhook deliveries ----------------------------------------------------------------------------------------
  async function deliveriesPage(params) {
    const pageNo = Number(params.get("page") || 1);
    const found = await call("GET", `/api/v1/notification/events${query({ page: pageNo, pageSize: 50 })}`);
    async function resend(id, button) {
      button.disabled = true;
      try {
        await call("POST", `/api/v1/notification/events/${encodeURIComponent(id)}/resend`, {});
        await route();
      } catch (error) {
        button.disabled = false;
        button.after(el("span", { class: "error" }, ` ${error.message}`));
      }
    }
    const rows = found.items.flatMap((event) => {
      const deliveries = event.deliveryStatus.length ? event.deliveryStatus : [null];
      return deliveries.map((d, i) => el("tr", { "data-event": event.id },
        el("td", {}, i === 0 ? formatTime(event.createdAt, localZone) : ""),
        el("td", {}, i === 0 ? event.type : ""),
        el("td", {}, i === 0 ? el("code", {}, event.id) : ""),
        el("td", {}, d ? d.channel.id : "—"),
        el("td", {}, d ? el("span", { class: `badge ${d.state}` }, d.state) : "no channel"),
        el("td", { class: "num" }, d ? String(d.attempts.length) : "0"),
        el("td", {}, d && d.attempts.length ? attemptSummary(d.attempts[d.attempts.length - 1]) : el("span", { class: "muted" }, d && d.reason ? d.reason : "—")),
        el("td", {}, i === 0 ? el("button", { type: "button", class: "secondary resend", onclick: (e) => resend(event.id, e.currentTarget) }, "Resend") : "")));
    });
    page.replaceChildren(
      el("h1", {}, "Webhook deliveries"),
      rows.length
        ? el("div", { class: "card" }, table(["Created", "Type", "Event", "Channel", "State", { label: "Attempts", num: true }, "Last response", ""], rows),
          el("p", { class: "controls" },
            pageNo > 1 ? el("a", { href: `#/deliveries${query({ page: pageNo - 1 })}` }, "← newer") : null,
            pageNo * found.pageSize < found.totalCount ? el("a", { href: `#/deliveries${query({ page: pageNo + 1 })}` }, "older →") : null,
            el("span", { class: "muted" }, `${found.totalCount} event(s)`)))
        : el("p", { class: "muted" }, "No notification events yet. Configure channels and rules under /api/v1/notification."),
    );
  }

  // -- optional sections (invoices, Stripe reports): shown as the server's API returns them ---------------------
  function cellValue(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "object") {
      const text = JSON.stringify(value);
      return el("code", { title: text }, text.length > 80 ? `${text.slice(0, 80)}…` : text);
    }
    return String(value);
  }

  // Money and quantities are the API's decimal strings, shown exactly as sent: never through a float.
  const money = (amount, currency) => `${amount} ${currency || ""}`.trim();
  const plain = (value) => (value === undefined || value === null ? "" : String(value));

  function periodText(period, zone) {
    return `${formatTime(period.from, zone, "DATE")} – ${formatTime(period.to, zone, "DATE")}`;
  }

  function invoiceZone(invoice) {
    return (invoice.customer && invoice.customer.timezone) || "UTC";
  }

  function invoiceTable(items, withCustomer) {
    const headers = ["Invoice", ...(withCustomer ? ["Customer"] : []), "Period", "Kind", "Status", { label: "Total", num: true }];
    return table(headers, items.map((invoice) => el("tr", { class: "clickable", "data-invoice": invoice.id, onclick: () => setHash(`/invoices/${invoice.id}`) },
      el("td", {}, el("a", { href: `#/invoices/${encodeURIComponent(invoice.id)}` }, el("code", {}, invoice.id))),
      withCustomer ? el("td", {}, invoice.customer && invoice.customer.id ? customerLink(invoice.customer.id) : "—") : null,
      el("td", {}, periodText(invoice.period, invoiceZone(invoice))),
      // Two invoices can share a period: a subscription's opening one bills its first fees in advance.
      el("td", { class: "invoice-kind" }, {
        opening: "opening (fees in advance)",
        correction: "correction (late usage)",
      }[invoice.kind] || "period"),
      el("td", {}, el("span", { class: `badge ${invoice.status}` }, invoice.status)),
      el("td", { class: "num total" }, money(invoice.totals.total, invoice.currency)))));
  }

  const INVOICE_STATUSES = ["draft", "issued", "paid", "void", "uncollectible"];

  async function invoicesPage(params) {
    if (!features.invoices) throw new Error("Invoices: this server has no invoice API");
    const status = INVOICE_STATUSES.includes(params.get("status")) ? params.get("status") : "";
    const pageNo = Math.max(1, Number(params.get("page") || 1));
    const pageSize = 50;
    const [found] = await Promise.all([
      call("GET", `${features.invoices}${query({ status, limit: pageSize, offset: (pageNo - 1) * pageSize })}`),
      loadCustomerNames(),
    ]);
    const items = Array.isArray(found) ? found : found.items || [];
    const total = found.totalCount === undefined ? items.length : found.totalCount;
    const filter = el("select", { id: "invoice-status", onchange: (e) => setHash("/invoices", { status: e.currentTarget.value }) },
      el("option", { value: "" }, "any status"), INVOICE_STATUSES.map((s) => el("option", { value: s, selected: s === status }, s)));
    page.replaceChildren(
      el("h1", {}, "Invoices"),
      el("div", { class: "controls" }, el("label", { for: "invoice-status" }, "Status"), filter, el("span", { class: "muted" }, `${total} invoice(s)`)),
      items.length
        ? el("div", { class: "card", id: "invoice-list" }, invoiceTable(items, true),
          el("p", { class: "controls" },
            pageNo > 1 ? el("a", { href: `#/invoices${query({ status, page: pageNo - 1 })}` }, "← newer") : null,
            pageNo * pageSize < total ? el("a", { href: `#/invoices${query({ status, page: pageNo + 1 })}` }, "older →") : null))
        : el("p", { class: "muted" }, "No invoices yet."),
    );
  }

  function tierBreakdown(line, currency) {
    return el("table", { class: "tiers" },
      el("thead", {}, el("tr", {}, ["Tier", { label: "Quantity", num: true }, { label: "Unit price", num: true }, { label: "Flat price", num: true }, { label: "Amount", num: true }]
        .map((h) => el("th", { class: h.num ? "num" : "" }, h.label || h)))),
      el("tbody", {}, line.tiers.map((tier) => el("tr", { "data-tier": tier.tier },
        el("td", {}, `tier ${tier.tier}`),
        el("td", { class: "num" }, plain(tier.quantity)),
        el("td", { class: "num" }, plain(tier.unitPrice)),
        el("td", { class: "num" }, plain(tier.flatPrice)),
        el("td", { class: "num" }, money(tier.amount, currency))))));
  }

  function invoiceLines(invoice) {
    const zone = invoiceZone(invoice);
    const totals = invoice.totals || {};
    const totalRow = (label, value, cls) => el("tr", { class: cls }, el("td", { colspan: 4, class: "num" }, label), el("td", { class: "num" }, money(value, invoice.currency)));
    return el("div", { id: "invoice-lines" },
      el("table", {},
        el("thead", {}, el("tr", {}, ["Line", "Period", { label: "Quantity", num: true }, { label: "Unit price", num: true }, { label: "Amount", num: true }]
          .map((h) => el("th", { class: h.num ? "num" : "" }, h.label || h)))),
        el("tbody", {}, invoice.lines.map((line) => el("tr", { class: "invoice-line", "data-key": line.rateCardKey || line.type },
          el("td", {}, el("span", { class: "line-name" }, line.name),
            line.description ? el("div", { class: "muted" }, line.description) : null,
            (line.warnings || []).map((w) => el("div", { class: "warning line-warning", role: "note" }, w)),
            Array.isArray(line.tiers) && line.tiers.length ? tierBreakdown(line, invoice.currency) : null),
          el("td", {}, line.period ? periodText(line.period, zone) : ""),
          el("td", { class: "num quantity" }, plain(line.quantity)),
          el("td", { class: "num unit-price" }, plain(line.unitPrice)),
          el("td", { class: "num amount" }, money(line.amount, invoice.currency))))),
        el("tfoot", {},
          totalRow("Subtotal", totals.amount, "subtotal"),
          totals.commitments !== undefined && Number(totals.commitments) !== 0 ? totalRow("Commitments", totals.commitments, "commitments") : null,
          totalRow("Total", totals.total, "total"))));
  }

  /** Where Stripe holds the invoice: sync state, Stripe's status, payment problems, errors. */
  function syncText(sync) {
    const parts = [sync.status.replace(/_/g, " ")];
    if (sync.externalStatus) parts.push(`Stripe: ${sync.externalStatus}`);
    if (sync.paymentStatus === "failed") parts.push("payment failed");
    if (sync.error && sync.error.message) parts.push(sync.error.message);
    return parts.join(" · ");
  }

  /** Actions the API allows in each status (POST /invoices/{id}/{action}). */
  const INVOICE_ACTIONS = {
    draft: [["approve", "Approve and issue"], ["void", "Void"]],
    issued: [["mark-paid", "Mark paid"], ["mark-uncollectible", "Mark uncollectible"], ["void", "Void"]],
  };

  async function invoicePage(params, id) {
    if (!features.invoices) throw new Error("Invoices: this server has no invoice API");
    const base = `${features.invoices}/${encodeURIComponent(id)}`;
    const invoice = await call("GET", base);
    const zone = invoiceZone(invoice);
    const message = el("p", { id: "invoice-message", role: "status" });
    async function act(action, label, button) {
      if (action === "void" && !window.confirm(`Void invoice ${invoice.id}? This is final.`)) return;
      for (const b of page.querySelectorAll("#invoice-actions button")) b.disabled = true;
      try {
        await call("POST", `${base}/${action}`, {});
        await route();
      } catch (error) {
        if (error instanceof Stale) return;
        for (const b of page.querySelectorAll("#invoice-actions button")) b.disabled = false;
        message.replaceChildren(el("span", { class: "error" }, `${label}: ${error.message}`));
        button.focus();
      }
    }
    const actions = (INVOICE_ACTIONS[invoice.status] || []).map(([action, label]) =>
      el("button", { type: "button", class: action === "approve" ? "" : "secondary", "data-action": action, onclick: (e) => act(action, label, e.currentTarget) }, label));
    const customer = invoice.customer || {};
    const props = [
      ["Customer", customer.id ? el("a", { href: `#/customers/${encodeURIComponent(customer.id)}` }, customer.name || customer.id) : "—"],
      ["Period", `${periodText(invoice.period, zone)} (${zone})`],
      ["Currency", invoice.currency],
      ["Created", formatTime(invoice.createdAt, localZone)],
      invoice.issuedAt ? ["Issued", formatTime(invoice.issuedAt, localZone)] : null,
      invoice.asOf ? ["Usage counted as of", formatTime(invoice.asOf, localZone)] : null,
      invoice.paidAt ? ["Paid", formatTime(invoice.paidAt, localZone)] : null,
      invoice.voidedAt ? ["Voided", formatTime(invoice.voidedAt, localZone)] : null,
      invoice.uncollectibleAt ? ["Uncollectible", formatTime(invoice.uncollectibleAt, localZone)] : null,
      ["Revision", String(invoice.revision)],
      invoice.number ? ["Number", el("span", { id: "invoice-number" }, invoice.number)] : null,
      invoice.sync ? ["Stripe", el("span", { id: "invoice-sync" }, syncText(invoice.sync),
        invoice.sync.hostedInvoiceUrl ? [" · ", el("a", { href: invoice.sync.hostedInvoiceUrl, rel: "noopener" }, "hosted invoice")] : null)] : null,
      invoice.sync && invoice.sync.tax !== undefined ? ["Tax (Stripe Tax)", money(invoice.sync.tax, invoice.currency)] : null,
      invoice.sync && invoice.sync.totalWithTax !== undefined ? ["Total with tax", money(invoice.sync.totalWithTax, invoice.currency)] : null,
    ].filter(Boolean);
    page.replaceChildren(
      el("p", {}, el("a", { href: "#/invoices" }, "← All invoices")),
      el("h1", {}, "Invoice ", el("code", {}, invoice.id), " ", el("span", { class: `badge ${invoice.status}`, id: "invoice-status-badge" }, invoice.status)),
      el("div", { class: "controls", id: "invoice-actions" },
        actions,
        features.invoiceHtml
          ? el("button", { type: "button", class: "secondary", id: "printable", onclick: () => openPrintable(invoice.id).catch((e) => message.replaceChildren(el("span", { class: "error" }, e.message))) }, "Printable view")
          : null,
        features.invoicePdf
          ? el("button", { type: "button", class: "secondary", id: "download-pdf", onclick: () => downloadPdf(invoice).catch((e) => message.replaceChildren(el("span", { class: "error" }, e.message))) }, "Download PDF")
          : null),
      message,
      el("div", { class: "card" }, el("dl", { class: "props" }, props.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))),
      el("div", { class: "card" }, el("h2", {}, "Lines"), invoiceLines(invoice)),
      el("details", { class: "card" }, el("summary", {}, "JSON"), el("pre", {}, JSON.stringify(invoice, null, 2))),
    );
  }

  async function apiListPage(title, path) {
    if (!path) throw new Error(`${title}: this server has no such API`);
    const data = await call("GET", path);
    const items = Array.isArray(data) ? data : data.items || data.data || [];
    const columns = [...new Set(items.flatMap((item) => Object.keys(item)))].slice(0, 8);
    const detail = el("div", { class: "card", id: "api-detail", hidden: true });
    function show(item, row) {
      for (const r of page.querySelectorAll("tr.selected")) r.classList.remove("selected");
      row.classList.add("selected");
      detail.hidden = false;
      detail.replaceChildren(el("h2", {}, `${title.replace(/s$/, "")} ${item.id || ""}`), el("pre", {}, JSON.stringify(item, null, 2)));
    }
    page.replaceChildren(
      el("h1", {}, title),
      items.length
        ? el("div", { class: "row" }, el("div", { class: "card" }, table(columns, items.map((item) => {
          const row = el("tr", { class: "clickable" }, columns.map((c) => el("td", {}, cellValue(item[c]))));
          row.addEventListener("click", () => show(item, row));
          return row;
        }))), detail)
        : el("p", { class: "muted" }, `No ${title.toLowerCase()} yet.`),
    );
  }

  /** The server's printable invoice page, fetched with the key (a plain link could not send it). */
  async function openPrintable(id) {
    const url = features.invoiceHtml.replace(/\{[A-Za-z]+\}/, encodeURIComponent(id));
    const response = await fetch(url, { headers: { Authorization: `Bearer ${key()}`, Accept: "text/html" } });
    if (!response.ok) throw new Error(`printable invoice: HTTP ${response.status}`);
    const blob = new Blob([await response.text()], { type: "text/html" });
    window.open(URL.createObjectURL(blob), "_blank", "noopener");
  }

  /** The invoice's PDF, fetched with the key (a plain link could not send it) and saved as a file. */
  async function downloadPdf(invoice) {
    const url = features.invoicePdf.replace(/\{[A-Za-z]+\}/, encodeURIComponent(invoice.id));
    const response = await fetch(url, { headers: { Authorization: `Bearer ${key()}` } });
    if (!response.ok) {
      const problem = await response.json().catch(() => null);
      throw new Error(`PDF: ${(problem && problem.detail) || `HTTP ${response.status}`}`);
    }
    const link = el("a", { href: URL.createObjectURL(await response.blob()), download: `${invoice.number || `invoice-${invoice.id}`}.pdf` });
    document.body.append(link);
    link.click();
    link.remove();
  }

  // -- unbilled usage: what no invoice will ever carry (GET /api/v1/billing/unbilled) ---------------------
  const UNBILLED_REASONS = {
    subject_without_customer: "subject without a customer",
    no_subscription: "no subscription at the time",
    meter_not_priced: "meter not priced by the plan",
  };

  function monthStart(offset) {
    const now = new Date();
    return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + offset, 1)).toISOString().slice(0, 10);
  }

  async function unbilledPage(params) {
    if (!features.unbilled) throw new Error("Unbilled usage: this server has no billing API");
    const from = /^\d{4}-\d{2}-\d{2}$/.test(params.get("from") || "") ? params.get("from") : monthStart(-1);
    const to = /^\d{4}-\d{2}-\d{2}$/.test(params.get("to") || "") ? params.get("to") : monthStart(1);
    const reason = Object.keys(UNBILLED_REASONS).includes(params.get("reason")) ? params.get("reason") : "";
    const [report] = await Promise.all([
      call("GET", `${features.unbilled}${query({ from: `${from}T00:00:00Z`, to: `${to}T00:00:00Z`, reason })}`),
      loadCustomerNames(),
    ]);
    const fromInput = el("input", { type: "date", id: "unbilled-from", value: from });
    const toInput = el("input", { type: "date", id: "unbilled-to", value: to });
    const reasonSelect = el("select", { id: "unbilled-reason" }, el("option", { value: "" }, "any reason"),
      Object.entries(UNBILLED_REASONS).map(([value, label]) => el("option", { value, selected: value === reason }, label)));
    const apply = () => setHash("/unbilled", { from: fromInput.value, to: toInput.value, reason: reasonSelect.value });
    const rows = report.items.map((row) => {
      const zone = row.customer ? row.customer.timezone : "UTC";
      return el("tr", { class: "unbilled-row", "data-reason": row.reason },
        el("td", {}, el("span", { class: `badge ${row.reason}` }, UNBILLED_REASONS[row.reason] || row.reason)),
        el("td", {}, row.customer ? customerLink(row.customer.id) : el("code", { class: "subject" }, row.subject)),
        el("td", {}, el("a", { href: `#/meters/${encodeURIComponent(row.meter)}` }, row.meter)),
        el("td", {}, `${formatTime(row.period.from, zone)} – ${formatTime(row.period.to, zone)} (${zone})`),
        el("td", { class: "num quantity" }, plain(row.quantity)),
        el("td", { class: "muted" }, row.detail));
    });
    page.replaceChildren(
      el("h1", {}, "Unbilled usage"),
      el("p", { class: "muted" }, "Usage that no invoice will ever carry: each quantity is the meter's figure over the period shown (voided events left out)."),
      el("div", { class: "controls" },
        el("label", { for: "unbilled-from" }, "From"), fromInput,
        el("label", { for: "unbilled-to" }, "To"), toInput,
        el("label", { for: "unbilled-reason" }, "Reason"), reasonSelect,
        el("button", { type: "button", id: "unbilled-apply", onclick: apply }, "Show"),
        el("span", { class: "muted", id: "unbilled-count" }, `${report.totalCount} row(s)`)),
      rows.length
        ? el("div", { class: "card", id: "unbilled-list" }, table(["Reason", "Subject or customer", "Meter", "Period", { label: "Quantity", num: true }, "Why"], rows))
        : el("p", { class: "muted", id: "unbilled-empty" }, "Nothing unbilled in this range: every event's usage is on some invoice."),
    );
  }

  function attemptSummary(attempt) {
    const code = attempt.response.statusCode ? `HTTP ${attempt.response.statusCode}` : attempt.error || attempt.state;
    const body = attempt.response.body ? ` ${attempt.response.body.slice(0, 120)}` : "";
    return el("span", { title: attempt.error || "" }, `${code}, ${attempt.response.durationMs} ms,${body}`);
  }

  route();
})();
