//! HELLO [protover [AUTH user pass] [SETNAME name]]: switches the connection to RESP2 or
//! RESP3 and describes the server (a map in RESP3), as Redis 7 does.
use super::{Client, ParseResult, parse_int};
use crate::resp::{self, Reply};

pub struct Hello {
    /// None: HELLO without a version keeps the connection's protocol.
    proto: Option<u8>,
    setname: Option<String>,
}

impl Hello {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Hello> {
        let Some((ver, mut rest)) = args.split_first() else { return Ok(Hello { proto: None, setname: None }) };
        let ver = parse_int(ver).map_err(|_| "ERR Protocol version is not an integer or out of range".to_string())?;
        if ver != 2 && ver != 3 {
            return Err("NOPROTO unsupported protocol version".into());
        }
        let mut setname = None;
        while let Some((opt, tail)) = rest.split_first() {
            match (opt.to_ascii_lowercase().as_slice(), tail) {
                (b"auth", [_, _, more @ ..]) => rest = more,
                (b"setname", [name, more @ ..]) => {
                    setname = Some(super::client::client_name(name)?);
                    rest = more;
                }
                _ => return Err(format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(opt))),
            }
        }
        Ok(Hello { proto: Some(ver as u8), setname })
    }

    pub fn apply(self, client: &mut Client, out: &mut Reply) {
        if let Some(name) = self.setname {
            // As CLIENT SETNAME: an empty name clears it (CLIENT GETNAME then gives null).
            client.name = (!name.is_empty()).then_some(name);
        }
        if let Some(proto) = self.proto {
            out.resp3 = proto == 3;
        }
        out.map_len(7);
        for (k, v) in [("server", "redis"), ("version", super::info::REDIS_COMPAT_VERSION)] {
            resp::bulk(out, k.as_bytes());
            resp::bulk(out, v.as_bytes());
        }
        resp::bulk(out, b"proto");
        let proto = if out.resp3 { 3 } else { 2 };
        resp::integer(out, proto);
        resp::bulk(out, b"id");
        resp::integer(out, client.id as i64);
        for (k, v) in [("mode", "standalone"), ("role", "master")] {
            resp::bulk(out, k.as_bytes());
            resp::bulk(out, v.as_bytes());
        }
        resp::bulk(out, b"modules");
        resp::array_len(out, 0);
    }
}
