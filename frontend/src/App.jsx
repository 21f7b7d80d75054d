import { useCallback, useEffect, useState } from "react";
import { createTask, eventsUrl, getJson } from "./api.js";

function Health({ health }) {
  if (!health) return <p>checking…</p>;
  const checks = health.body?.checks ?? {};
  return (
    <ul className="checks">
      <li className={health.ok ? "ok" : "bad"}>API: {health.ok ? "healthy" : `HTTP ${health.status}`}</li>
      {Object.entries(checks).map(([name, c]) => (
        <li key={name} className={c.ok ? "ok" : "bad"}>
          {name}: {c.ok ? "ok" : c.error}
        </li>
      ))}
    </ul>
  );
}

export default function App() {
  const [health, setHealth] = useState(null);
  const [release, setRelease] = useState("…");
  const [tasks, setTasks] = useState([]);
  const [events, setEvents] = useState([]);
  const [title, setTitle] = useState("");

  const refresh = useCallback(async () => {
    setHealth(await getJson("/api/health"));
    const v = await getJson("/api/version");
    if (v.ok) setRelease(v.body.release);
    const t = await getJson("/api/tasks");
    if (t.ok) setTasks(t.body);
  }, []);

  useEffect(() => {
    refresh();
    const timer = setInterval(refresh, 15000);
    return () => clearInterval(timer);
  }, [refresh]);

  useEffect(() => {
    let ws;
    let closed = false;
    const open = () => {
      ws = new WebSocket(eventsUrl());
      ws.onmessage = (msg) => {
        const event = JSON.parse(msg.data);
        setEvents((prev) => [event, ...prev].slice(0, 20));
        if (event.task) refresh();
      };
      ws.onclose = () => {
        if (!closed) setTimeout(open, 2000);
      };
    };
    open();
    return () => {
      closed = true;
      ws?.close();
    };
  }, [refresh]);

  const submit = async (e) => {
    e.preventDefault();
    if (!title.trim()) return;
    await createTask(title.trim(), "");
    setTitle("");
    refresh();
  };

  return (
    <main>
      <header>
        <h1>Task Tracker</h1>
        <span className="release">release {release}</span>
      </header>
      <section>
        <h2>Health</h2>
        <Health health={health} />
      </section>
      <section>
        <h2>Tasks</h2>
        <form onSubmit={submit}>
          <input value={title} onChange={(e) => setTitle(e.target.value)} placeholder="New task" />
          <button type="submit">Add</button>
        </form>
        <table>
          <thead>
            <tr><th>#</th><th>Title</th><th>Status</th><th>Summary</th></tr>
          </thead>
          <tbody>
            {tasks.map((t) => (
              <tr key={t.id}>
                <td>{t.id}</td><td>{t.title}</td><td>{t.status}</td><td>{t.summary ?? ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
      <section>
        <h2>Live events</h2>
        <ol className="events">
          {events.map((ev, i) => (
            <li key={i}>{ev.type}{ev.task ? ` #${ev.task.id}` : ""}</li>
          ))}
        </ol>
      </section>
    </main>
  );
}
