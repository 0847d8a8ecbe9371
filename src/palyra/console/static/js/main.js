// The console shell: a hash router over the pages, and the session's end.

import { sessionEnded } from "./api.js";
import { h } from "./dom.js";
import { time } from "./format.js";
import * as auth from "./pages/auth.js";
import * as budgets from "./pages/budgets.js";
import * as cron from "./pages/cron.js";
import * as memory from "./pages/memory.js";
import * as overview from "./pages/overview.js";
import * as providers from "./pages/providers.js";
import * as routing from "./pages/routing.js";
import * as skills from "./pages/skills.js";
import * as tokens from "./pages/tokens.js";
import * as usage from "./pages/usage.js";
import { View } from "./view.js";

const pages = { overview, providers, auth, usage, budgets, routing, cron, memory, skills, tokens };
const main = document.getElementById("main");
let current = null;

async function show() {
  const name = window.location.hash.replace(/^#\/?/, "").split("?")[0] || "overview";
  const page = pages[name] ? name : "overview";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === `#/${page}`);
  }
  if (current && current.dispose) current.dispose();
  const view = new View(main, page);
  current = view;
  delete main.dataset.ready;
  main.replaceChildren(view.flashBox);
  document.title = `Palyra console · ${page}`;
  main.append(...pages[page].render(view));
  await view.ready();
}

function watchExpiry() {
  const expires = Number(document.querySelector('meta[name="palyra-session-expires"]')?.content || 0);
  if (!expires) return;
  document.getElementById("session-expiry").replaceChildren(h("span", {}, `session until ${time(expires)}`));
  const check = () => {
    if (Date.now() / 1000 >= expires) sessionEnded();
  };
  setInterval(check, 30_000);
}

window.addEventListener("hashchange", show);
watchExpiry();
show();
