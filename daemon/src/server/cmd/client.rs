//! CLIENT SETNAME | GETNAME | ID | SETINFO | INFO
use super::{Client, ParseResult, wrong_args};
use crate::resp::{self, Reply};

pub enum ClientCmd {
    SetName(String),
    GetName,
    Id,
    SetInfo,
    Info,
}

/// A connection name as Redis takes one: printable ASCII with no space, so that
/// `CLIENT INFO`'s `key=value` line stays one line of fields.
pub fn client_name(name: &[u8]) -> ParseResult<String> {
    if name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        Ok(String::from_utf8_lossy(name).into_owned())
    } else {
        Err("ERR Client names cannot contain spaces, newlines or special characters.".into())
    }
}

impl ClientCmd {
    pub fn parse(args: &[&[u8]]) -> ParseResult<ClientCmd> {
        let Some((sub, rest)) = args.split_first() else { return Err(wrong_args("client")) };
        match (sub.to_ascii_lowercase().as_slice(), rest) {
            (b"setname", [name]) => Ok(ClientCmd::SetName(client_name(name)?)),
            (b"getname", []) => Ok(ClientCmd::GetName),
            (b"id", []) => Ok(ClientCmd::Id),
            (b"setinfo", [_, _]) => Ok(ClientCmd::SetInfo),
            (b"info", []) => Ok(ClientCmd::Info),
            (known @ (b"setname" | b"getname" | b"id" | b"setinfo" | b"info"), _) => {
                Err(wrong_args(&format!("client|{}", String::from_utf8_lossy(known))))
            }
            _ => Err(format!("ERR unknown subcommand '{}'. Try CLIENT HELP.", String::from_utf8_lossy(sub))),
        }
    }

    pub fn apply(self, client: &mut Client, out: &mut Reply) {
        match self {
            ClientCmd::SetName(name) => {
                client.name = (!name.is_empty()).then_some(name);
                resp::simple(out, "OK");
            }
            ClientCmd::GetName => match &client.name {
                Some(n) => resp::bulk(out, n.as_bytes()),
                None => out.null(),
            },
            ClientCmd::Id => resp::integer(out, client.id as i64),
            ClientCmd::SetInfo => resp::simple(out, "OK"),
            ClientCmd::Info => {
                let line = format!("id={} name={} db=0\n", client.id, client.name.as_deref().unwrap_or(""));
                resp::bulk(out, line.as_bytes());
            }
        }
    }
}
