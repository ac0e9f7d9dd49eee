// DrawPad's view (anywidget ESM, shipped in the package; nothing is fetched from the network).
// Strokes are drawn locally with pointer events (mouse, pen, touch); shortly after a stroke ends
// the canvas goes to Python as PNG bytes in `image`; Python answers with `prediction`, `seen`
// (PNG of the 28x28 the model saw) and `count` in one message.

const SIDE = 280;        // canvas pixels (10x MNIST's 28)
const PEN = 20;          // stroke width: about MNIST's pen relative to its 20x20 digit box
const DEBOUNCE_MS = 60;  // a stroke that starts within this time cancels the pending send
const INK = "#000000";
const PAPER = "#ffffff";

function bytesOf(value) {
  // A synced bytes trait arrives as a DataView (or ArrayBuffer / typed array).
  if (!value) return new Uint8Array(0);
  if (value instanceof DataView) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return new Uint8Array(0);
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function h(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render({ model, el }) {
  const root = h("div", "labkit-drawpad");
  const left = h("div", "labkit-drawpad-left");
  const canvas = h("canvas", "labkit-drawpad-canvas");
  canvas.width = SIDE;
  canvas.height = SIDE;
  canvas.setAttribute("aria-label", "drawing area: draw one digit");
  const tools = h("div", "labkit-drawpad-tools");
  const clear = h("button", "labkit-drawpad-clear", "Clear");
  clear.type = "button";
  const hint = h("span", "labkit-drawpad-hint", "draw one digit (0-9)");
  tools.append(clear, hint);
  left.append(canvas, tools);

  const right = h("div", "labkit-drawpad-result");
  const head = h("div", "labkit-drawpad-head");
  const digit = h("div", "labkit-drawpad-digit");
  const conf = h("div", "labkit-drawpad-conf");
  head.append(digit, conf);
  const message = h("div", "labkit-drawpad-message");
  const bars = h("div", "labkit-drawpad-bars");
  const seenBox = h("figure", "labkit-drawpad-seen");
  const seenImg = h("img");
  seenImg.alt = "the 28x28 image the model saw";
  seenBox.append(seenImg, h("figcaption", "", "what the model sees (28\u00d728)"));
  const timing = h("div", "labkit-drawpad-timing");
  right.append(head, message, bars, seenBox, timing);
  root.append(left, right);
  el.append(root);

  const ctx = canvas.getContext("2d");
  const blank = () => {
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, SIDE, SIDE);
  };
  blank();

  let timer = null;       // pending debounced send
  let strokeEnd = null;   // performance.now() when the stroke being predicted ended
  let lastSent = null;    // bytes this view sent last (its echo must not be redrawn)
  let seenUrl = null;
  let drawing = null;     // {id, x, y} of the pointer drawing now
  let inflight = 0;       // drawings sent, not yet answered
  let sentAt = null;      // performance.now() when the last drawing left for the kernel
  // data-busy="1" from pen down until the answer to the last drawing is shown (tests wait on it)
  const setBusy = () => { root.dataset.busy = (drawing || timer !== null || inflight > 0) ? "1" : "0"; };

  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * SIDE / r.width, (e.clientY - r.top) * SIDE / r.height];
  };
  const dot = (x, y) => {
    ctx.fillStyle = INK;
    ctx.beginPath();
    ctx.arc(x, y, PEN / 2, 0, 2 * Math.PI);
    ctx.fill();
  };
  const line = (x0, y0, x1, y1) => {
    ctx.strokeStyle = INK;
    ctx.lineWidth = PEN;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    ctx.stroke();
  };

  function pngBytes() {
    // toDataURL, not toBlob: Chromium encodes toBlob in idle time, which can wait ~1 s; a
    // 280x280 PNG encodes synchronously in a few ms.
    const b64 = canvas.toDataURL("image/png").split(",", 2)[1];
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }

  function send() {
    timer = null;
    if (drawing) return;  // a newer stroke will send instead
    const bytes = pngBytes();
    if (lastSent && sameBytes(bytes, lastSent)) { setBusy(); return; }  // nothing changed: the answer stands
    lastSent = bytes;
    inflight += 1;
    root.dataset.state = "waiting";
    model.set("image", new DataView(bytes.buffer));
    model.save_changes();
    sentAt = performance.now();
    if (strokeEnd !== null) root.dataset.encodeMs = (sentAt - strokeEnd).toFixed(1);  // debounce + PNG
    setBusy();
  }

  function onDown(e) {
    if (e.button !== undefined && e.button > 0) return;  // left button, pen tip or touch only
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    if (timer !== null) { clearTimeout(timer); timer = null; }  // debounced: the next stroke is coming
    const [x, y] = point(e);
    drawing = { id: e.pointerId, x, y };
    dot(x, y);
    setBusy();
  }
  function onMove(e) {
    if (!drawing || e.pointerId !== drawing.id) return;
    e.preventDefault();
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) {
      const [x, y] = point(ev);
      line(drawing.x, drawing.y, x, y);
      drawing.x = x;
      drawing.y = y;
    }
  }
  function onUp(e) {
    if (!drawing || e.pointerId !== drawing.id) return;
    e.preventDefault();
    drawing = null;
    strokeEnd = performance.now();
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(send, DEBOUNCE_MS);
    setBusy();
  }
  canvas.addEventListener("pointerdown", onDown);
  canvas.addEventListener("pointermove", onMove);
  canvas.addEventListener("pointerup", onUp);
  canvas.addEventListener("pointercancel", onUp);

  clear.addEventListener("click", () => {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    drawing = null;
    strokeEnd = null;
    blank();
    showPrediction({});  // at once; Python confirms with an empty prediction
    const wasEmpty = lastSent !== null && lastSent.length === 0 && bytesOf(model.get("image")).length === 0;
    lastSent = new Uint8Array(0);
    if (!wasEmpty) {
      inflight += 1;
      model.set("image", new DataView(new ArrayBuffer(0)));
      model.save_changes();
    }
    setBusy();
  });

  function showPrediction(p) {
    bars.replaceChildren();
    delete root.dataset.digit;
    digit.textContent = "";
    conf.textContent = "";
    message.textContent = "";
    timing.textContent = "";
    if (p && p.error) {
      root.dataset.state = "error";
      message.textContent = p.error;
      seenBox.style.display = "none";
      return;
    }
    if (!p || p.digit === undefined || !p.probabilities) {
      root.dataset.state = "empty";
      message.textContent = "Draw a digit in the box; the prediction appears when you lift the pen.";
      seenBox.style.display = "none";
      return;
    }
    root.dataset.state = "predicted";
    root.dataset.digit = String(p.digit);
    digit.textContent = String(p.digit);
    conf.textContent = `predicted, ${(100 * p.probabilities[p.digit]).toFixed(1)}%`;
    p.probabilities.forEach((q, d) => {
      const row = h("div", "labkit-drawpad-bar" + (d === p.digit ? " labkit-drawpad-top" : ""));
      const track = h("span", "labkit-drawpad-track");
      const fill = h("span", "labkit-drawpad-fill");
      fill.style.width = `${(100 * q).toFixed(1)}%`;
      track.append(fill);
      row.append(h("span", "labkit-drawpad-label", String(d)), track, h("span", "labkit-drawpad-pct", `${(100 * q).toFixed(1)}%`));
      bars.append(row);
    });
    const png = bytesOf(model.get("seen"));
    if (seenUrl) URL.revokeObjectURL(seenUrl);
    seenUrl = png.length ? URL.createObjectURL(new Blob([png], { type: "image/png" })) : null;
    if (seenUrl) seenImg.src = seenUrl;
    seenBox.style.display = seenUrl ? "" : "none";
  }

  function update(answered) {
    const p = model.get("prediction") || {};
    if (answered) inflight = Math.max(0, inflight - 1);
    if (answered && sentAt !== null) {
      root.dataset.kernelMs = (performance.now() - sentAt).toFixed(1);  // to the kernel and back
      sentAt = null;
    }
    root.dataset.count = String(model.get("count"));
    showPrediction(p);
    const py = model.get("python_ms");
    const parts = [];
    if (py) parts.push(`model ${py.toFixed(0)} ms`);
    if (strokeEnd !== null && (p.digit !== undefined || p.error)) {
      const started = strokeEnd;
      strokeEnd = null;
      // Shown: measured at the next frame, after the browser has laid out the result.
      requestAnimationFrame(() => {
        const ms = performance.now() - started;
        root.dataset.latencyMs = ms.toFixed(1);
        timing.textContent = `stroke end to prediction ${ms.toFixed(0)} ms` + (parts.length ? ` (${parts.join(", ")})` : "");
      });
    } else if (parts.length) {
      timing.textContent = parts.join(", ");
    }
    setBusy();
  }

  async function drawImageFromPython() {
    // An image set from Python (not this view's own echo) is shown on the pad.
    const data = bytesOf(model.get("image"));
    if (lastSent && sameBytes(data, lastSent)) return;
    blank();
    if (!data.length) return;
    try {
      const bmp = await createImageBitmap(new Blob([data]));
      const s = Math.min(SIDE / bmp.width, SIDE / bmp.height);
      const w = bmp.width * s, hh = bmp.height * s;
      ctx.drawImage(bmp, (SIDE - w) / 2, (SIDE - hh) / 2, w, hh);
    } catch (err) {
      // not an image the browser can decode (Python still says what it made of it)
    }
  }

  const onAnswer = () => update(true);
  model.on("change:count", onAnswer);
  model.on("change:image", drawImageFromPython);
  drawImageFromPython();
  update(false);

  return () => {
    model.off("change:count", onAnswer);
    model.off("change:image", drawImageFromPython);
    if (timer !== null) clearTimeout(timer);
    if (seenUrl) URL.revokeObjectURL(seenUrl);
  };
}

export default { render };
