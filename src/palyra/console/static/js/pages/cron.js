// Cron jobs and their runs: run now, enable, disable; a run started here is followed until it ends.

import { get, post } from "../api.js";
import { badge, h, table } from "../dom.js";
import { duration, ms, time } from "../format.js";

const RUN_KIND = { succeeded: "healthy", running: "info", failed: "error", abandoned: "error", skipped: "warn" };

function summary(run) {
  if (run.error) return run.error;
  if (!run.summary) return "—";
  return Object.entries(run.summary)
    .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.length : typeof v === "object" && v !== null ? JSON.stringify(v) : v}`)
    .join(", ");
}

export function render(view) {
  const jobs = view.section("Jobs", async () => {
    const { data } = await get("/cron/jobs");
    return table(
      [
        { label: "Job", cell: (j) => h("span", {}, h("strong", {}, j.job_id), h("br"), h("small", { class: "muted" }, j.description)) },
        { label: "Schedule", cell: (j) => (j.kind === "cron" ? `${j.cron} (${j.timezone})` : `every ${duration(j.interval_s)}`) },
        { label: "Enabled", cell: (j) => badge(j.enabled ? "enabled" : "disabled", j.enabled ? "healthy" : "warn") },
        { label: "Next run", cell: (j) => (j.enabled ? time(j.next_run_at) : "—") },
        { label: "Last run", cell: (j) => (j.last_run ? h("span", {}, badge(j.last_run.status, RUN_KIND[j.last_run.status]), ` ${time(j.last_run.started_at || j.last_run.created_at)}`) : "never") },
        {
          label: "",
          cell: (j) =>
            h(
              "span",
              { class: "actions", "data-job": j.job_id },
              view.button("Run now", () => runNow(j.job_id), (r) => `${r.job_id}: run ${r.run_id} ${r.status}`, { class: "small", "data-action": "run" }),
              view.button(
                j.enabled ? "Disable" : "Enable",
                () => post(`/cron/jobs/${encodeURIComponent(j.job_id)}/${j.enabled ? "disable" : "enable"}`).then(async (r) => (await jobs.reload(), r)),
                () => `${j.job_id} ${j.enabled ? "disabled" : "enabled"}`,
                { class: "small secondary" },
              ),
            ),
        },
      ],
      data,
      "No jobs.",
      { id: "jobs-table" },
    );
  });

  const runs = view.section("Runs", async () => {
    const { data } = await get("/cron/runs?limit=50");
    return table(
      [
        { label: "Run", cell: (r) => h("code", {}, r.run_id) },
        { label: "Job", cell: (r) => r.job_id },
        { label: "Trigger", cell: (r) => r.trigger },
        { label: "Status", cell: (r) => badge(r.status, RUN_KIND[r.status]) },
        { label: "Started", cell: (r) => time(r.started_at || r.created_at) },
        { label: "Duration", cell: (r) => ms(r.duration_ms), class: "num" },
        { label: "Result", cell: (r) => summary(r) },
      ],
      data,
      "No runs yet.",
      { id: "runs-table" },
    );
  });

  async function follow(runId, deadline) {
    try {
      const run = await get(`/cron/runs/${encodeURIComponent(runId)}`);
      if (run.status !== "running" || Date.now() > deadline) {
        await Promise.all([runs.reload(), jobs.reload()]);
        return;
      }
    } catch {
      return;
    }
    view.later(500, () => follow(runId, deadline));
  }

  async function runNow(jobId) {
    const started = await post(`/cron/jobs/${encodeURIComponent(jobId)}/run`);
    await runs.reload();
    follow(started.run_id, Date.now() + 60_000);
    return started;
  }

  return [h("h1", {}, "Cron jobs"), jobs, runs];
}
