// Display formats. Times are the browser's local time; amounts keep enough digits for cheap models.

const pad = (n) => String(n).padStart(2, "0");

export function time(unix) {
  if (unix === null || unix === undefined) return "—";
  const d = new Date(unix * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function usd(value) {
  if (value === null || value === undefined) return "—";
  const digits = Math.abs(value) >= 1 ? 2 : 6;
  return "$" + Number(value).toFixed(digits);
}

// Axis ticks: two significant digits, so $0.0000015 does not print as $0.000002 next to $0.000002.
export function usdTick(value) {
  if (!value) return "$0";
  return Math.abs(value) >= 1 ? "$" + value.toFixed(2) : "$" + Number(value.toPrecision(2));
}

export function int(value) {
  if (value === null || value === undefined) return "—";
  return Math.round(Number(value)).toLocaleString("en-US");
}

export function ms(value) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(0)} ms`;
}

export function percent(ratio) {
  return ratio === null || ratio === undefined ? "—" : `${(Number(ratio) * 100).toFixed(1)} %`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Number(seconds);
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

// The admin API takes "since" as a duration; these turn calendar boundaries into one.
export function sinceMidnight(now = new Date()) {
  const start = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  return `${Math.max(1, Math.ceil((now - start) / 1000))}s`;
}

export function sinceMonthStart(now = new Date()) {
  const start = new Date(now.getFullYear(), now.getMonth(), 1);
  return `${Math.max(1, Math.ceil((now - start) / 1000))}s`;
}
