// Skills: installed skills with their status and quarantine reasons; audit, release; trusted keys.

import { get, post } from "../api.js";
import { badge, h, table } from "../dom.js";
import { time } from "../format.js";

const STATUS_KIND = { active: "healthy", quarantined: "error" };

export function render(view) {
  const skills = view.section("Installed skills", async () => {
    const { data } = await get("/skills");
    return table(
      [
        { label: "Skill", cell: (s) => h("span", {}, h("strong", {}, s.skill_id), ` ${s.version}`, h("br"), h("small", { class: "muted" }, s.description || "")) },
        { label: "Publisher", cell: (s) => `${s.publisher} (${s.key_id})` },
        { label: "Status", cell: (s) => badge(s.status, STATUS_KIND[s.status]) },
        {
          label: "Quarantine reasons",
          cell: (s) => (s.quarantine_reasons && s.quarantine_reasons.length ? h("ul", { class: "reasons" }, s.quarantine_reasons.map((r) => h("li", {}, r))) : "—"),
        },
        { label: "Last audit", cell: (s) => time(s.last_audit_at) },
        {
          label: "",
          cell: (s) =>
            h(
              "span",
              { class: "actions" },
              view.button("Audit", () => post(`/skills/${encodeURIComponent(s.skill_id)}/audit`).then(async (r) => (await skills.reload(), r)), (r) => `${s.skill_id}: ${r.ok ? "passed" : "failed: " + (r.reasons || []).join("; ")}`, { class: "small" }),
              s.status === "quarantined"
                ? view.confirmButton("Release", () => post(`/skills/${encodeURIComponent(s.skill_id)}/release`).then(async (r) => (await skills.reload(), r)), () => `${s.skill_id} released from quarantine`, { class: "small danger" })
                : null,
            ),
        },
      ],
      data,
      "No skills installed (palyra skills install …).",
      { id: "skills-table" },
    );
  });

  const auditAll = view.button("Audit all skills", () => post("/skills/audit").then(async (r) => (await skills.reload(), r)), (r) => `Audited ${r.audited ?? r.data.length} skill(s)`);

  const trust = view.section("Trusted publisher keys", async () => {
    const { data } = await get("/skills/trust");
    return table(
      [
        { label: "Publisher", cell: (k) => k.publisher },
        { label: "Key id", cell: (k) => h("code", {}, k.key_id) },
        { label: "Added", cell: (k) => time(k.added_at) },
      ],
      data,
      "No trusted keys.",
    );
  });

  return [h("h1", {}, "Skills"), h("div", { class: "toolbar" }, auditAll), skills, trust];
}
