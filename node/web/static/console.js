// Live parts of a page (data-live) are refreshed every 5 s from the same URL: no build step,
// no framework; the page works without it.
(function () {
  const live = document.querySelectorAll("[data-live]");
  if (!live.length) return;
  setInterval(async function () {
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.querySelectorAll("[data-live]");
      live.forEach(function (el, i) { if (fresh[i]) el.innerHTML = fresh[i].innerHTML; });
    } catch (e) { /* the node may be restarting: try again next time */ }
  }, 5000);
})();
