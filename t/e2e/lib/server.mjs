// Starts the system nginx with the built module and the tiny model on a
// free port in a temporary prefix, for the end-to-end tests.
// Environment: LLM_BUILD_DIR (default build), TEST_NGINX_BINARY (nginx),
// TEST_NGINX_MODEL_DIR (default t/fixtures/tiny-qwen3).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const build = resolve(root, process.env.LLM_BUILD_DIR || 'build');
const moduleSo = join(build, 'nginx', 'objs', 'ngx_http_llm_module.so');
const nginxBin = process.env.TEST_NGINX_BINARY || 'nginx';
const modelDir = resolve(root, process.env.TEST_NGINX_MODEL_DIR || 't/fixtures/tiny-qwen3');

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.unref();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port: p } = s.address();
      s.close(() => ok(p));
    });
  });
}

async function waitReady(port, prefix, limitMs) {
  const deadline = Date.now() + limitMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      if (r.status === 200) return;
      last = `status ${r.status}`;
    } catch (e) {
      last = String(e);
    }
    await new Promise((ok) => setTimeout(ok, 100));
  }
  const log = existsSync(join(prefix, 'logs', 'error.log'))
    ? readFileSync(join(prefix, 'logs', 'error.log'), 'utf8').slice(-2000) : '';
  throw new Error(`nginx did not become ready (${last})\n${log}`);
}

// Returns { port, prefix, baseURL, stop() } once the model answers /health.
export async function startServer() {
  assert.ok(existsSync(moduleSo), `${moduleSo} is missing: run make module`);
  const prefix = mkdtempSync(join(tmpdir(), 'ngx-llm-e2e-'));
  mkdirSync(join(prefix, 'logs'));
  const port = await freePort();
  const conf = `
load_module ${moduleSo};
worker_processes 1;
daemon on;
master_process on;
pid ${prefix}/logs/nginx.pid;
error_log ${prefix}/logs/error.log info;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path ${prefix}/body;
    proxy_temp_path ${prefix}/proxy;
    fastcgi_temp_path ${prefix}/fastcgi;
    uwsgi_temp_path ${prefix}/uwsgi;
    scgi_temp_path ${prefix}/scgi;
    llm_model tiny ${modelDir} threads=1 kv_cache=64m;
    server {
        listen 127.0.0.1:${port};
        location / { llm_pass tiny; }
    }
}
`;
  const args = ['-p', prefix, '-c', join(prefix, 'nginx.conf'),
                '-e', join(prefix, 'logs', 'error.log')];
  writeFileSync(join(prefix, 'nginx.conf'), conf);
  const r = spawnSync(nginxBin, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `nginx failed to start: ${r.stderr}`);

  const stop = () => {
    const pidFile = join(prefix, 'logs', 'nginx.pid');
    if (existsSync(pidFile)) {
      spawnSync(nginxBin, [...args, '-s', 'quit']);
      // wait for the master to remove its pid file
      const deadline = Date.now() + 10000;
      while (existsSync(pidFile) && Date.now() < deadline) {
        spawnSync('sleep', ['0.1']);
      }
    }
    rmSync(prefix, { recursive: true, force: true });
  };
  try {
    await waitReady(port, prefix, 120000);
  } catch (e) {
    stop();
    throw e;
  }
  return { port, prefix, baseURL: `http://127.0.0.1:${port}/v1`, stop };
}
