//! Deterministic, realistic terminal output as asciicast v2, shared by the benches: a
//! seeded pool of prompts, colored listings, progress bars, wide Unicode and long lines,
//! cut into whole-line chunks.

use std::io::Write;

use bytes::Bytes;

/// splitmix64: small, seedable, good enough to vary content.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

pub const FILES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "README.md",
    "src",
    "target",
    "main.rs",
    "lib.rs",
    "node_modules",
    "package.json",
    ".git",
    "build.sh",
    "docker-compose.yml",
    "backup-2026-03-21.tar.gz",
    "日本語のメモ.txt",
    "数据报告-第三季度.csv",
    "résumé.pdf",
    "😀-notes.md",
    "한국어-문서.txt",
    "Ünïcödé-ñame.log",
    "deploy.yaml",
    "id_ed25519.pub",
    ".bashrc",
    "vendor",
    "tests",
];
pub const DIRS: &[&str] = &[
    "src",
    "target",
    "node_modules",
    ".git",
    "vendor",
    "tests",
    "文档",
    "configs",
];
pub const COMMANDS: &[&str] = &[
    "ls -la --color=auto",
    "git status",
    "cargo build --release",
    "tail -f /var/log/syslog",
    "kubectl get pods -A",
    "docker ps",
    "tree -L 2",
    "journalctl -u tailscaled -f",
    "curl -sS https://example.com/api/v1/items | jq .",
    "htop",
];
pub const CRATES: &[&str] = &[
    "serde", "tokio", "hyper", "axum", "redb", "clap", "bytes", "h2", "tracing", "chrono",
];
pub const LEVELS: &[&str] = &[
    "\u{1b}[32m INFO\u{1b}[0m",
    "\u{1b}[33m WARN\u{1b}[0m",
    "\u{1b}[34mDEBUG\u{1b}[0m",
    "\u{1b}[31mERROR\u{1b}[0m",
];
pub const PATHS: &[&str] = &[
    "/api/v1/sessions",
    "/v2/record",
    "/healthz",
    "/metrics",
    "/api/v1/users/42",
    "/static/app.js",
];

/// Builds the output text of a terminal session, one event at a time.
pub struct Terminal {
    rng: Rng,
    time: f64,
    out: Vec<u8>,
}

impl Terminal {
    /// Appends one `[time, code, text]` line, JSON-encoded like Tailscale's encoder.
    pub fn event(&mut self, code: &str, text: &str) {
        self.time += (self.rng.below(50_000) as f64) / 1e6;
        let data = serde_json::Value::String(text.to_string());
        let _ = writeln!(self.out, "[{:.6},\"{code}\",{data}]", self.time);
    }

    pub fn prompt_and_command(&mut self) {
        self.event("o", "\r\u{1b}[0m\u{1b}[27m\u{1b}[24m\u{1b}[J\u{1b}[01;32m➜  \u{1b}[36m~/src/quorumcast\u{1b}[00m \u{1b}[K");
        self.event("o", "\u{1b}[?1h\u{1b}=\u{1b}[?2004h");
        let command = self.rng.pick(COMMANDS);
        for c in command.chars() {
            self.event("o", &c.to_string());
        }
        self.event("o", "\u{1b}[?1l\u{1b}>\u{1b}[?2004l\r\r\n");
        self.event(
            "o",
            &format!("\u{1b}]2;{command}\u{7}\u{1b}]1;{command}\u{7}"),
        );
    }

    pub fn listing(&mut self) {
        let mut text = format!("total {}\r\n", self.rng.below(400));
        for _ in 0..5 + self.rng.below(35) {
            let dir = self.rng.below(3) == 0;
            let (mode, name, color) = if dir {
                ("drwxr-xr-x", self.rng.pick(DIRS), "01;34")
            } else {
                ("-rw-r--r--", self.rng.pick(FILES), "00")
            };
            let size = self.rng.below(10_000_000);
            let day = 1 + self.rng.below(28);
            text += &format!("{mode}  2 alice staff {size:>9} Mar {day:>2} 16:35 \u{1b}[{color}m{name}\u{1b}[0m\r\n");
        }
        self.event("o", &text);
    }

    pub fn progress_bar(&mut self) {
        for step in 1..=20 {
            let bar = format!("{}{}", "#".repeat(step), " ".repeat(20 - step));
            let rate = self.rng.below(1000) as f64 / 10.0;
            self.event(
                "o",
                &format!("\rprogress {:>3}% [{bar}] {rate:.1} MB/s", step * 5),
            );
        }
        self.event("o", "\r\n");
    }

    pub fn log_lines(&mut self) {
        let mut text = String::new();
        for _ in 0..1 + self.rng.below(20) {
            if self.rng.below(2) == 0 {
                let krate = self.rng.pick(CRATES);
                text += &format!(
                    "\u{1b}[1m\u{1b}[32m   Compiling\u{1b}[0m {krate} v1.{}.{}\r\n",
                    self.rng.below(40),
                    self.rng.below(200)
                );
            } else {
                let (level, path) = (self.rng.pick(LEVELS), self.rng.pick(PATHS));
                let ms = self.rng.below(5000) as f64 / 10.0;
                text += &format!("\u{1b}[2m2026-03-21T16:35:{:02}.{:03}Z\u{1b}[0m {level} \u{1b}[2mquorumcast::ingest\u{1b}[0m: request handled path={path} status=200 dur={ms}ms\r\n", self.rng.below(60), self.rng.below(1000));
            }
        }
        self.event("o", &text);
    }

    pub fn tree(&mut self) {
        let mut text = String::from(".\r\n");
        for i in 0..3 + self.rng.below(15) {
            let branch = if i % 4 == 3 {
                "│   └── "
            } else {
                "├── "
            };
            text += &format!(
                "{branch}\u{1b}[01;34m{}\u{1b}[0m / {}\r\n",
                self.rng.pick(DIRS),
                self.rng.pick(FILES)
            );
        }
        text += "\r\n12 directories, 31 files — 完了 ✓\r\n";
        self.event("o", &text);
    }

    /// An htop-like full-screen redraw: cursor addressing, colored meters, box drawing.
    pub fn full_screen(&mut self) {
        let mut text = String::from("\u{1b}[?1049h\u{1b}[H\u{1b}[2J");
        for row in 1..=24 {
            let used = self.rng.below(40);
            let meter = format!(
                "\u{1b}[32m{}\u{1b}[31m{}\u{1b}[0m{}",
                "|".repeat(used),
                "|".repeat(used / 4),
                " ".repeat(50 - used - used / 4)
            );
            text += &format!(
                "\u{1b}[{row};1H\u{1b}[1;36m{:>3}\u{1b}[0m[{meter}{:>5.1}%]",
                row,
                used as f64 * 2.5
            );
        }
        text += "\u{1b}[25;1H┌──────── 進程 ────────┐ \u{1b}[7mF1Help F2Setup F10Quit\u{1b}[0m";
        self.event("o", &text);
    }

    /// One stretch of a session, weighted towards the common cases.
    pub fn activity(&mut self) {
        match self.rng.below(100) {
            0..=24 => self.prompt_and_command(),
            25..=44 => self.listing(),
            45..=59 => self.progress_bar(),
            60..=79 => self.log_lines(),
            80..=89 => self.tree(),
            90..=98 => self.full_screen(),
            _ => {
                let (cols, rows) = (80 + self.rng.below(140), 24 + self.rng.below(40));
                self.event("r", &format!("{cols}x{rows}"));
            }
        }
    }
}

/// A pool of event lines cut into chunks of whole lines; streams are planned from it.
#[derive(Clone)]
pub struct Corpus {
    pool: Bytes,
    /// Byte ranges of the chunks, each ending with a newline.
    chunks: Vec<(usize, usize)>,
    seed: u64,
}

impl Corpus {
    pub fn generate(seed: u64, bytes: usize, chunk: usize) -> Corpus {
        let mut terminal = Terminal {
            rng: Rng(seed),
            time: 0.0,
            out: Vec::with_capacity(bytes + 64 * 1024),
        };
        while terminal.out.len() < bytes {
            terminal.activity();
        }
        let pool = Bytes::from(terminal.out);
        let chunks = cut_lines(&pool, chunk);
        Corpus { pool, chunks, seed }
    }

    /// A Tailscale-style header line for stream `id`.
    pub fn header(&self, id: usize) -> Bytes {
        let header = serde_json::json!({
            "version": 2, "width": 203, "height": 38, "timestamp": 1_795_622_192,
            "env": {"TERM": "xterm-256color"},
            "srcNode": format!("laptop-{id}.tail1234.ts.net"), "srcNodeID": format!("n{id}CNTRL"),
            "srcNodeTags": null, "sshUser": "alice", "localUser": "alice",
            "srcNodeUserID": 30_585_448_562_688_899u64, "srcNodeUser": "alice@example.com",
            "connectionID": format!("bench-{}-{id}", self.seed),
        });
        Bytes::from(format!("{header}\n"))
    }

    /// Stream `id`: its header, then whole chunks from a per-stream start in the pool
    /// (wrapping) while the total stays within `budget`. Returns the chunks and the total.
    pub fn plan(&self, id: usize, budget: u64) -> (Vec<Bytes>, u64) {
        let header = self.header(id);
        let mut total = header.len() as u64;
        let mut chunks = vec![header];
        let mut at = id.wrapping_mul(7919) % self.chunks.len();
        loop {
            let (start, end) = self.chunks[at];
            if total + (end - start) as u64 > budget {
                break;
            }
            total += (end - start) as u64;
            chunks.push(self.pool.slice(start..end));
            at = (at + 1) % self.chunks.len();
        }
        (chunks, total)
    }

    /// `count` log lines of 200 bytes each (unless a line is longer) for paced stream `id`.
    pub fn paced_lines(&self, id: usize, count: usize) -> Vec<Bytes> {
        const LINE_BYTES: usize = 200;
        let mut rng = Rng(self.seed ^ (id as u64 + 1).wrapping_mul(0x1234_5678_9abc));
        let encode = |time: f64, text: &str| {
            let data = serde_json::Value::String(format!("{text}\r\n"));
            format!("[{time:.6},\"o\",{data}]\n")
        };
        (0..count)
            .map(|i| {
                let (level, path) = (rng.pick(LEVELS), rng.pick(PATHS));
                let mut text = format!(
                    "\u{1b}[2m16:35:{:02}.{:03}\u{1b}[0m {level} {path} status=200 dur={}ms req={:016x}",
                    rng.below(60),
                    rng.below(1000),
                    rng.below(900),
                    rng.next()
                );
                let time = i as f64 * 0.01;
                // Spaces encode as themselves, so padding the text pads the line exactly.
                let pad = LINE_BYTES.saturating_sub(encode(time, &text).len());
                text.push_str(&" ".repeat(pad));
                Bytes::from(encode(time, &text))
            })
            .collect()
    }
}

/// Cuts `pool` into chunks of whole lines of at most `max` bytes (a longer line is a chunk).
pub fn cut_lines(pool: &[u8], max: usize) -> Vec<(usize, usize)> {
    let mut chunks = Vec::new();
    let (mut start, mut last_newline) = (0, None);
    for at in memchr::memchr_iter(b'\n', pool) {
        let end = at + 1;
        if end - start > max {
            if let Some(cut) = last_newline {
                chunks.push((start, cut));
                start = cut;
            }
        }
        if end - start > max {
            chunks.push((start, end));
            start = end;
        }
        last_newline = Some(end);
    }
    if start < pool.len() {
        chunks.push((start, pool.len()));
    }
    chunks
}
