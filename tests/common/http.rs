//! A small real HTTP/1.1 server on 127.0.0.1 for download tests: GET and HEAD, byte
//! ranges, 404s, extra headers, and scripted faults (a body cut short, a status).
//! Every connection is closed after one response; the server stops when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    headers: HashMap<String, Vec<(String, String)>>,
    /// path → send only this many body bytes once, then drop the connection.
    cut_once: HashMap<String, usize>,
    /// path → answer GETs with this status, this many times.
    status: HashMap<String, (u16, usize)>,
    log: Vec<Request>,
}

pub struct Server {
    pub base: String,
    state: Arc<Mutex<State>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    port: u16,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let _ = handle(conn, &s);
                    });
                }
            }
        });
        Server { base: format!("http://127.0.0.1:{port}"), state, stop, port }
    }

    pub fn add(&self, path: &str, body: Vec<u8>) {
        self.state.lock().unwrap().files.insert(path.to_string(), body);
    }
    pub fn header(&self, path: &str, name: &str, value: &str) {
        self.state.lock().unwrap().headers.entry(path.into()).or_default().push((name.into(), value.into()));
    }
    pub fn cut_once(&self, path: &str, after: usize) {
        self.state.lock().unwrap().cut_once.insert(path.into(), after);
    }
    pub fn fail(&self, path: &str, status: u16, times: usize) {
        self.state.lock().unwrap().status.insert(path.into(), (status, times));
    }
    pub fn log(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }
    pub fn gets(&self, path: &str) -> Vec<Request> {
        self.log().into_iter().filter(|r| r.method == "GET" && r.path == path).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn handle(mut conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let mut st = state.lock().unwrap();
    st.log.push(Request { method: method.clone(), path: path.clone(), range: range.clone() });
    let extra: String = st.headers.get(&path).into_iter().flatten().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    if let Some((code, times)) = st.status.get_mut(&path).filter(|_| method == "GET") {
        if *times > 0 {
            *times -= 1;
            let code = *code;
            drop(st);
            return write!(conn, "HTTP/1.1 {code} Scripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
    let Some(body) = st.files.get(&path).cloned() else {
        drop(st);
        return write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let cut = st.cut_once.remove(&path);
    drop(st);
    let len = body.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let (status, slice, cr) = match start {
        Some(s) if s >= len => {
            return write!(conn, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        Some(s) => ("206 Partial Content", &body[s..], format!("Content-Range: bytes {s}-{}/{len}\r\n", len - 1)),
        None => ("200 OK", &body[..], String::new()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{cr}{extra}Accept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        slice.len()
    )?;
    if method == "HEAD" {
        return Ok(());
    }
    match cut {
        Some(n) => {
            conn.write_all(&slice[..n.min(slice.len())])?;
            conn.flush()?;
            conn.shutdown(std::net::Shutdown::Both)
        }
        None => conn.write_all(slice),
    }
}
