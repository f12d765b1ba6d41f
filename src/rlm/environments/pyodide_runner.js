// The REPL process of the "pyodide" environment: CPython compiled to WebAssembly, under Deno.
//
//   deno run <flags> pyodide_runner.js PYODIDE_DIR GUEST_DIR [SNAPSHOT]
//     loads Pyodide from PYODIDE_DIR (from SNAPSHOT when it loads), copies the guest's
//     files (GUEST_FILES) from GUEST_DIR into Pyodide's in-memory file system and runs
//     `runner.serve` on this process's stdin/stdout: the same control frames as every
//     process environment, LM requests included (they travel on the control channel, since
//     the process has no network).  Model code blocks in a synchronous stdin read while its
//     `llm_query` waits for the host.
//   deno run <flags> pyodide_runner.js PYODIDE_DIR --make-snapshot GUEST_DIR
//     writes a memory snapshot of an interpreter that has imported the runner to stdout;
//     the host keeps it next to PYODIDE_DIR, one per version of the runtime's files.
//
// No remote import, no network, no environment variable: only files the host's
// `--allow-read` names can be read, through Deno.

const [pyodideDir, mode, ...rest] = Deno.args;
const IMPORT = 'import sys; sys.path.insert(0, "/rlm"); import runner';
// What runner.py imports, itself included (rlm.environments.files.RUNNER_FILES less the broker).
const GUEST_FILES = ["guest.py", "guards.py", "protocol.py", "schema.py", "validation.py",
                     "values.py", "runner.py"];
const GLUE = `
import _rlm_host, protocol, runner
from pyodide.ffi import to_js

class _Pipe:
    """The process's stdin and stdout, read and written synchronously."""
    def read(self, size):
        return _rlm_host.read(size).to_bytes()
    def write(self, data):
        _rlm_host.write(to_js(data))
    def flush(self):
        pass

runner.serve(protocol.FileStream(_Pipe(), _Pipe()),
             lambda path: _rlm_host.read_file(path).to_bytes())
`;

function write(data) {
  for (let done = 0; done < data.length;) done += Deno.stdout.writeSync(data.subarray(done));
}

function read(size) {
  const buffer = new Uint8Array(size);
  const count = Deno.stdin.readSync(buffer);
  return count === null ? new Uint8Array(0) : buffer.subarray(0, count);
}

function shipGuest(pyodide, guestDir) {
  pyodide.FS.mkdirTree("/rlm");
  for (const name of GUEST_FILES) {
    pyodide.FS.writeFile(`/rlm/${name}`, Deno.readFileSync(`${guestDir}/${name}`));
  }
}

const quiet = { write: (data) => Deno.stderr.writeSync(data) };
const { loadPyodide } = await import(`${pyodideDir}/pyodide.mjs`);
const options = { indexURL: `${pyodideDir}/`, packages: [] };

if (mode === "--make-snapshot") {
  const pyodide = await loadPyodide({ ...options, _makeSnapshot: true });
  shipGuest(pyodide, rest[0]);
  pyodide.runPython(IMPORT);
  write(pyodide.makeMemorySnapshot());
} else {
  let pyodide;
  try {
    pyodide = await loadPyodide({ ...options, _loadSnapshot: Deno.readFileSync(rest[0]) });
  } catch {
    pyodide = await loadPyodide(options); // no or unusable snapshot: slower, same result
  }
  pyodide.setStdout(quiet);
  pyodide.setStderr(quiet);
  pyodide.setStdin({ stdin: () => null });
  shipGuest(pyodide, mode);
  pyodide.runPython(IMPORT); // already done when the snapshot loaded
  pyodide.registerJsModule("_rlm_host", { read, write, read_file: (p) => Deno.readFileSync(p) });
  pyodide.runPython(GLUE);
}
