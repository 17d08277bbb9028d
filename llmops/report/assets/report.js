/* llmops report: draws each <canvas data-chart="NAME"> from the page's JSON block with Chart.js,
   and sorts a table.sortable by the column header clicked. Loads nothing. */
(function () {
  "use strict";
  var page = JSON.parse(document.getElementById("report-data").textContent);
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var spec = page.charts[canvas.getAttribute("data-chart")];
    if (spec) { new Chart(canvas, spec); }
  });

  function key(cell) {
    var text = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    var number = parseFloat(text);
    return { text: text.trim(), number: text.trim() !== "" && isFinite(text) ? number : null };
  }
  function compare(a, b) {
    if (a.number !== null && b.number !== null) { return a.number - b.number; }
    if (a.text === "" || b.text === "") { return (a.text === "") - (b.text === ""); }
    return a.text.localeCompare(b.text, undefined, { numeric: true });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, column) {
      th.tabIndex = 0;
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var order = compare(key(r1.cells[column]), key(r2.cells[column]));
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  document.body.setAttribute("data-ready", "1");
})();
