// The execution page's "Load more events": the next page of the timeline from the JSON API
// (/api/executions/ID/events?after=SEQUENCE). Every value is set as text, never as HTML.
"use strict";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function eventItem(event) {
  const item = element("li", "event");
  item.dataset.sequence = String(event.sequence);
  item.append(element("span", "seq", "#" + event.sequence), " ");
  item.append(element("span", "kind kind-" + event.type, event.type), " ");
  if (event.created_at) {
    const time = element("time", "", event.created_at.slice(0, 19).replace("T", " "));
    time.dateTime = event.created_at;
    item.append(time);
  }
  if (event.data && Object.keys(event.data).length) {
    item.append(" ", element("code", "payload", JSON.stringify(event.data, null, 1).replace(/\n\s*/g, " ")));
  }
  return item;
}

async function loadMore(button) {
  const timeline = document.getElementById("timeline");
  const id = encodeURIComponent(timeline.dataset.execution);
  const after = encodeURIComponent(button.dataset.after);
  button.disabled = true;
  try {
    const response = await fetch(`/api/executions/${id}/events?after=${after}&limit=100`, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const page = await response.json();
    for (const event of page.items) timeline.append(eventItem(event));
    if (page.next === null) button.remove();
    else button.dataset.after = String(page.next);
  } catch (error) {
    button.textContent = "Could not load more events (" + error.message + ")";
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("more-events");
  if (button) button.addEventListener("click", () => loadMore(button));
});
