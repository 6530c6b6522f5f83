// weightvault dashboard: live progress of an operation (server-sent events). No inline script:
// the page's Content-Security-Policy allows only this file.
"use strict";
(function () {
  const box = document.getElementById("job");
  if (!box || box.dataset.state !== "running") return;
  const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
  const size = (n) => {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  };
  const events = new EventSource(`/jobs/${box.dataset.job}/events`);
  events.onmessage = (msg) => {
    const job = JSON.parse(msg.data);
    box.dataset.state = job.state;
    set("job-state", job.state);
    set("job-phase", job.phase);
    set("job-files", job.total_files ? `${job.files_done}/${job.total_files}` : `${job.files_done}`);
    set("job-bytes", size(job.bytes_done));
    const bar = document.getElementById("job-progress");
    if (bar) {
      bar.max = job.total_bytes || 1;
      bar.value = job.total_bytes ? job.bytes_done : (job.state === "running" ? 0 : 1);
    }
    if (job.state !== "running") {
      set("job-result", job.result);
      set("job-hint", job.hint || "");
      if (job.state === "failed") document.getElementById("job-result").className = "error";
      set("job-record", job.record ? JSON.stringify(job.record, null, 1) : "");
      events.close();
    }
  };
  events.onerror = () => { events.close(); window.setTimeout(() => window.location.reload(), 2000); };
})();
