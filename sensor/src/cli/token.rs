//! `sensor token`: a run token for the caller's run, the public keys, and
//! checking a token.

use std::{io::Read as _, process::ExitCode};

use super::{
    args::{TokenArgs, TokenCommand},
    display::escape_terminal,
};
use crate::{
    control::{
        self,
        protocol::{Request, Response},
    },
    tokens::TokenRequest,
};

pub fn execute(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    match &args.action {
        Some(TokenCommand::Jwks { socket, .. }) => match control::request(socket, &Request::Jwks) {
            Ok(Response::Jwks { jwks, .. }) => {
                println!("{}", serde_json::to_string_pretty(&jwks)?);
                Ok(ExitCode::SUCCESS)
            }
            Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
            Err(e) => super::refusal(e),
        },
        Some(TokenCommand::Verify {
            token, aud, socket, ..
        }) => {
            let (issuer, jwks) = match control::request(socket, &Request::Jwks) {
                Ok(Response::Jwks { issuer, jwks }) => (issuer, jwks),
                Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
                Err(e) => return super::refusal(e),
            };
            let token = match token.as_deref() {
                Some(t) if t != "-" => t.to_owned(),
                _ => {
                    let mut t = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin().take(64 * 1024), &mut t)?;
                    t
                }
            };
            match crate::tokens::verify(token.trim(), &jwks, &issuer, aud.as_deref()) {
                Ok(claims) => {
                    println!("{}", serde_json::to_string_pretty(&claims)?);
                    if aud.is_none() {
                        eprintln!(
                            "sensor: the audience was not checked (it is {:?}; give --aud to check it)",
                            claims.aud
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => {
                    eprintln!(
                        "sensor: the token does not verify: {}",
                        escape_terminal(&why.to_string())
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        None => {
            let request = Request::Token(TokenRequest {
                aud: args.aud.clone().unwrap_or_default(),
                ttl_secs: args.ttl.map(|d| d.as_secs()),
                scopes: args.scopes.clone(),
            });
            match control::request(&args.socket, &request) {
                Ok(Response::Token { token, claims }) => {
                    if args.json {
                        println!(
                            "{}",
                            serde_json::json!({ "token": token, "claims": claims })
                        );
                    } else {
                        println!("{token}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
                Err(e) => super::refusal(e),
            }
        }
    }
}
