//! HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 only for now; `HELLO 3` gets
//! `-NOPROTO`, which clients take as "stay on RESP2".
use super::{Client, ParseResult, parse_int};
use crate::server::resp;

pub struct Hello {
    setname: Option<String>,
}

impl Hello {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<Hello> {
        let Some((ver, mut rest)) = args.split_first() else { return Ok(Hello { setname: None }) };
        let ver = parse_int(ver).map_err(|_| "ERR Protocol version is not an integer or out of range".to_string())?;
        if ver != 2 {
            return Err("NOPROTO sorry, this protocol version is not supported".into());
        }
        let mut setname = None;
        while let Some((opt, tail)) = rest.split_first() {
            match (opt.to_ascii_lowercase().as_slice(), tail) {
                (b"auth", [_, _, more @ ..]) => rest = more,
                (b"setname", [name, more @ ..]) => {
                    setname = Some(String::from_utf8_lossy(name).into_owned());
                    rest = more;
                }
                _ => return Err(format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(opt))),
            }
        }
        Ok(Hello { setname })
    }

    pub fn apply(self, client: &mut Client, out: &mut Vec<u8>) {
        if let Some(name) = self.setname {
            client.name = Some(name);
        }
        resp::array_len(out, 14);
        for (k, v) in [("server", "redis"), ("version", super::info::REDIS_COMPAT_VERSION)] {
            resp::bulk(out, k.as_bytes());
            resp::bulk(out, v.as_bytes());
        }
        resp::bulk(out, b"proto");
        resp::integer(out, 2);
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
