// One page being shown: its sections, its messages, and buttons that call the API.

import { messageOf } from "./api.js";
import { h } from "./dom.js";

export class View {
  constructor(main, name) {
    this.main = main;
    this.name = name;
    this.flashBox = h("div", { class: "flash-box", id: "flash" });
    this.pending = [];
    this.timers = [];
  }

  // Timers die with the page, so a poll never writes into a page the operator has left.
  later(ms, fn) {
    this.timers.push(setTimeout(fn, ms));
  }

  dispose() {
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
    if (this.onDispose) this.onDispose();
  }

  flash(kind, text) {
    this.flashBox.replaceChildren(h("p", { class: `flash ${kind}`, role: kind === "error" ? "alert" : "status" }, text));
  }

  clearFlash() {
    this.flashBox.replaceChildren();
  }

  // A titled block whose body comes from `load` (async, returns nodes); it can be reloaded.
  section(title, load, attrs = {}) {
    const body = h("div", { class: "section-body" }, h("p", { class: "muted" }, "Loading…"));
    const el = h("section", attrs, title ? h("h2", {}, title) : null, body);
    el.reload = async () => {
      try {
        body.replaceChildren(...[await load()].flat().filter(Boolean));
      } catch (err) {
        body.replaceChildren(h("p", { class: "flash error", role: "alert" }, messageOf(err)));
      }
    };
    this.pending.push(el.reload());
    return el;
  }

  // Runs `fn` for a button; shows `success(result)` or the API's error message.
  async act(button, fn, success) {
    if (button) button.disabled = true;
    try {
      const result = await fn();
      if (success) this.flash("ok", success(result));
      return result;
    } catch (err) {
      this.flash("error", messageOf(err));
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  }

  button(label, fn, success, attrs = {}) {
    const btn = h("button", { type: "button", ...attrs }, label);
    btn.addEventListener("click", () => this.act(btn, fn, success));
    return btn;
  }

  // A button that asks once more before doing something that cannot be undone.
  confirmButton(label, fn, success, attrs = {}) {
    const btn = h("button", { type: "button", class: "danger", ...attrs }, label);
    let armed = false;
    btn.addEventListener("click", async () => {
      if (!armed) {
        armed = true;
        btn.textContent = `Confirm: ${label.toLowerCase()}`;
        setTimeout(() => {
          armed = false;
          btn.textContent = label;
        }, 5000);
        return;
      }
      armed = false;
      btn.textContent = label;
      await this.act(btn, fn, success);
    });
    return btn;
  }

  async ready() {
    await Promise.all(this.pending);
    this.main.dataset.ready = this.name;
  }
}
