// Playground: streams a chat completion from POST /playground/chat (Server-Sent
// Events, the OpenAI wire format) and shows which runner answered and how fast.
"use strict";

(function () {
  var root = document.getElementById("playground");
  if (!root) return;
  var form = document.getElementById("chat-form");
  var transcript = document.getElementById("transcript");
  var send = document.getElementById("send");
  var stop = document.getElementById("stop");
  var statusLine = document.getElementById("chat-status");
  var history = [];
  var controller = null;

  function field(id) { return document.getElementById(id); }
  function setMeta(id, text) { field("meta-" + id).textContent = text; }
  function ms(value) { return value < 10000 ? Math.round(value) + " ms" : (value / 1000).toFixed(1) + " s"; }

  function bubble(role, text) {
    var placeholder = transcript.querySelector(".placeholder");
    if (placeholder) placeholder.remove();
    var item = document.createElement("div");
    item.className = "turn turn-" + role;
    var who = document.createElement("p");
    who.className = "turn-role";
    who.textContent = role === "user" ? "You" : "Assistant";
    var body = document.createElement("p");
    body.className = "turn-text";
    body.textContent = text;
    item.appendChild(who);
    item.appendChild(body);
    transcript.appendChild(item);
    transcript.scrollTop = transcript.scrollHeight;
    return body;
  }

  function busy(on) {
    send.disabled = on;
    stop.disabled = !on;
    root.setAttribute("aria-busy", on ? "true" : "false");
  }

  form.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  field("clear").addEventListener("click", function () {
    history = [];
    transcript.innerHTML = '<p class="muted placeholder">Your conversation appears here, streamed token by token.</p>';
    statusLine.textContent = "";
  });

  stop.addEventListener("click", function () {
    if (controller) controller.abort();
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var prompt = field("prompt").value.trim();
    if (!prompt || controller) return;
    var messages = [];
    var system = field("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    history.push({ role: "user", content: prompt });
    messages = messages.concat(history);
    bubble("user", prompt);
    field("prompt").value = "";
    var out = bubble("assistant", "");
    out.classList.add("streaming");
    ["runner", "routing", "ttft", "latency", "tokens", "speed", "request"].forEach(function (k) { setMeta(k, "…"); });
    statusLine.textContent = "Waiting for the first token…";
    busy(true);
    controller = new AbortController();
    var started = performance.now();
    var firstAt = null;
    var text = "";
    var usage = null;

    fetch("/playground/chat", {
      method: "POST",
      credentials: "same-origin",
      signal: controller.signal,
      headers: { "Content-Type": "application/json", "Accept": "text/event-stream",
                 "X-CSRF-Token": root.getAttribute("data-csrf") },
      body: JSON.stringify({
        model: field("model").value,
        messages: messages,
        max_tokens: parseInt(field("max_tokens").value || "128", 10),
        temperature: parseFloat(field("temperature").value || "0.7")
      })
    }).then(function (response) {
      var runner = response.headers.get("x-outpost-runner");
      var names = JSON.parse(root.getAttribute("data-runners") || "{}");
      setMeta("runner", runner ? (names[runner] ? names[runner] + " (" + runner + ")" : runner) : "—");
      setMeta("routing", response.headers.get("x-outpost-routing") || "—");
      setMeta("request", response.headers.get("x-request-id") || "—");
      if (!response.ok) {
        return response.json().then(function (body) {
          throw new Error((body && body.error && body.error.message) || ("HTTP " + response.status));
        }, function () { throw new Error("HTTP " + response.status); });
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) return;
          buffer += decoder.decode(chunk.value, { stream: true });
          var events = buffer.split("\n\n");
          buffer = events.pop();
          events.forEach(function (raw) {
            raw.split("\n").forEach(function (line) {
              if (line.indexOf("data:") !== 0) return;
              var data = line.slice(5).trim();
              if (data === "[DONE]") return;
              var payload = JSON.parse(data);
              if (payload.error) throw new Error(payload.error.message || "stream error");
              if (payload.usage) usage = payload.usage;
              var choice = payload.choices && payload.choices[0];
              var delta = choice && choice.delta && choice.delta.content;
              if (delta) {
                if (firstAt === null) {
                  firstAt = performance.now();
                  setMeta("ttft", ms(firstAt - started));
                  statusLine.textContent = "Streaming…";
                }
                text += delta;
                out.textContent = text;
                transcript.scrollTop = transcript.scrollHeight;
              }
            });
          });
          return pump();
        });
      }
      return pump();
    }).then(function () {
      finish(null);
    }, function (error) {
      finish(error);
    });

    function finish(error) {
      var total = performance.now() - started;
      setMeta("latency", ms(total));
      if (firstAt === null) setMeta("ttft", "—");
      if (usage) {
        setMeta("tokens", usage.prompt_tokens + " / " + usage.completion_tokens);
        var genSeconds = (performance.now() - (firstAt || started)) / 1000;
        setMeta("speed", genSeconds > 0 ? (usage.completion_tokens / genSeconds).toFixed(1) + " tok/s" : "—");
      } else {
        setMeta("tokens", "—");
        setMeta("speed", "—");
      }
      out.classList.remove("streaming");
      if (text) history.push({ role: "assistant", content: text });
      if (error && error.name === "AbortError") {
        statusLine.textContent = "Stopped.";
      } else if (error) {
        out.classList.add("error");
        out.textContent = text ? text + "\n\n[" + error.message + "]" : error.message;
        statusLine.textContent = "Failed: " + error.message;
      } else {
        statusLine.textContent = "Done in " + ms(total) + ".";
      }
      out.setAttribute("data-done", "true");
      controller = null;
      busy(false);
      field("prompt").focus();
    }
  });
})();
