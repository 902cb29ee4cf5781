// ms07 console: the only script of the pages besides uPlot. It draws the per-minute chart
// and, on the overview, refreshes the numbers every REFRESH_MS from /console/overview.json.
// Everything else works without it. No inline script: the CSP allows only this origin.
(function () {
  "use strict";
  var REFRESH_MS = 5000;
  var chart = document.getElementById("chart");
  if (!chart || typeof uPlot === "undefined") { return; }
  var plot = null;

  function columns(series) {
    return [series.t, series.delivered_per_s, series.errors_per_s, series.p50_ms, series.p99_ms];
  }

  function draw(series) {
    var width = Math.max(280, chart.clientWidth || 600);
    if (plot) { plot.setData(columns(series)); return; }
    plot = new uPlot({
      width: width, height: 220,
      series: [
        {},
        { label: "deliveries/s", stroke: "#1a7f37", scale: "rate" },
        { label: "errors/s", stroke: "#cf222e", scale: "rate" },
        { label: "p50 ms", stroke: "#0b5cad", scale: "ms" },
        { label: "p99 ms", stroke: "#8250df", scale: "ms" }
      ],
      axes: [{}, { scale: "rate", label: "/s" }, { scale: "ms", side: 1, label: "ms", grid: { show: false } }]
    }, columns(series), chart);
    window.addEventListener("resize", function () {
      plot.setSize({ width: Math.max(280, chart.clientWidth), height: 220 });
    });
  }

  function set(name, value) {
    document.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) {
      el.textContent = value === null || value === undefined ? "-" : String(value);
    });
  }

  function update(o) {
    draw(o.rates.series);
    ["delivered_per_s", "errors_per_s", "p50_ms", "p99_ms", "delivered", "errors"].forEach(function (k) {
      set(k, o.rates[k]);
    });
    ["total_length", "total_pending", "total_delayed", "dlq_size"].forEach(function (k) { set(k, o[k]); });
    Object.keys(o.queues).forEach(function (name) {
      var row = document.querySelector('tr[data-queue="' + CSS.escape(name) + '"]');
      if (!row) { return; }
      ["length", "pending", "delayed"].forEach(function (col) {
        var cell = row.querySelector('[data-col="' + col + '"]');
        if (cell) { cell.textContent = String(o.queues[name][col]); }
      });
    });
    document.body.setAttribute("data-updated", o.generated_at);
  }

  function poll() {
    fetch(chart.getAttribute("data-src"), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
      .then(update)
      .catch(function () { /* the next tick tries again */ });
  }

  if (chart.getAttribute("data-src") === "inline") {
    draw(JSON.parse(chart.getAttribute("data-series")));
  } else {
    poll();
    window.setInterval(poll, REFRESH_MS);
  }
})();
