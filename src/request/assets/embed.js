/* released-sidecar embed loader (served by the sidecar, not by the app).
 * Gives every Released embed element that has no auth-token one fresh token from the
 * same-origin token endpoint: those in the page now, and those added later (client-side
 * rendering, navigation). One call per element; a failure leaves the element as it was
 * and is reported on the console once. */
(function () {
  "use strict";
  var ENDPOINT = __ENDPOINT__;
  var TAGS = __TAGS__;
  var SELECTOR = TAGS.join(",");
  var tried = new WeakSet();
  var warned = false;

  function warnOnce(message) {
    if (!warned) {
      warned = true;
      console.warn("released-sidecar: no token for an embed: " + message);
    }
  }

  function wanted(el) {
    return el.nodeType === 1 && TAGS.indexOf(el.localName.toLowerCase()) >= 0 &&
      !el.hasAttribute("auth-token") && !tried.has(el);
  }

  async function fill(el) {
    tried.add(el);
    try {
      var response = await fetch(ENDPOINT, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { "Accept": "application/json" }
      });
      var body = await response.json().catch(function () { return {}; });
      if (!response.ok || typeof body.token !== "string" || body.token === "") {
        throw new Error(body.error || ("the token endpoint answered " + response.status));
      }
      if (!el.hasAttribute("auth-token")) {
        el.setAttribute("auth-token", body.token);
      }
    } catch (e) {
      warnOnce(e && e.message ? e.message : String(e));
    }
  }

  function scan(node) {
    if (node.nodeType !== 1) {
      return;
    }
    if (wanted(node)) {
      fill(node);
    }
    var found = node.querySelectorAll(SELECTOR);
    for (var i = 0; i < found.length; i++) {
      if (wanted(found[i])) {
        fill(found[i]);
      }
    }
  }

  new MutationObserver(function (records) {
    for (var i = 0; i < records.length; i++) {
      var added = records[i].addedNodes;
      for (var j = 0; j < added.length; j++) {
        scan(added[j]);
      }
    }
  }).observe(document.documentElement, { childList: true, subtree: true });
  scan(document.documentElement);
})();
