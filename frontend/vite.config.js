import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// Dev server proxies the API the way nginx does in production.
const apiTarget = process.env.API_URL || "http://localhost:8000";

export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      "/api": apiTarget,
      "/ws": { target: apiTarget.replace(/^http/, "ws"), ws: true },
    },
  },
  build: { outDir: "dist", assetsDir: "assets" },
});
