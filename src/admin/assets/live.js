// The live feed: new notifications from /events prepended to the table,
// built with textContent only (never innerHTML: every value is data).
(function () {
  "use strict";
  var table = document.getElementById("live");
  if (!table || !window.EventSource) { return; }
  var body = table.tBodies[0];
  var status = document.getElementById("live-status");
  var max = 50;
  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    row.appendChild(td);
    return td;
  }
  var source = new EventSource(table.getAttribute("data-events"));
  source.addEventListener("open", function () {
    if (status) { status.className = "live-dot on"; status.textContent = "live"; }
  });
  source.addEventListener("error", function () {
    if (status) { status.className = "live-dot off"; status.textContent = "reconnecting"; }
  });
  source.addEventListener("notification", function (e) {
    var n;
    try { n = JSON.parse(e.data); } catch (err) { return; }
    var row = document.createElement("tr");
    row.className = "fresh";
    row.setAttribute("data-id", String(n.id));
    cell(row, n.time.replace(" UTC", ""));
    var type = cell(row, "");
    var tag = document.createElement("span");
    tag.className = "type t-" + String(n.type).toLowerCase();
    tag.textContent = n.type;
    type.appendChild(tag);
    var receipt = cell(row, "");
    var link = document.createElement("a");
    link.href = "/notifications/" + encodeURIComponent(String(n.id));
    link.textContent = n.receipt;
    receipt.appendChild(link);
    cell(row, n.product);
    cell(row, n.amount + " " + n.currency, "num");
    cell(row, n.affiliate);
    cell(row, n.email);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > max) { body.deleteRow(body.rows.length - 1); }
  });
})();
