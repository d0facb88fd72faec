//! `mailctl dkim`: domains' DKIM keys, through the policy service's `Directory`.

use clap::{Subcommand, ValueEnum};
use mailflow_proto::v1::{
    DkimAlgorithm, DkimKeyInfo, GenerateDkimKeyRequest, ListDkimKeysRequest, RemoveDkimKeyRequest,
    directory_client::DirectoryClient,
};
use tonic::transport::Channel;

use crate::grpc_error;

/// The algorithms `--algorithm` offers.
#[derive(Clone, Copy, ValueEnum)]
pub enum Algorithm {
    /// RSA-2048 with SHA-256: understood by every verifier.
    Rsa,
    /// Ed25519 (RFC 8463): short keys, not yet understood everywhere.
    Ed25519,
}

/// `mailctl dkim ...`
#[derive(Subcommand)]
pub enum DkimAction {
    /// Generate a signing key for a local domain (replacing its current one) and print the
    /// DNS TXT record to publish.
    Generate {
        /// The local domain.
        domain: String,
        /// The selector; `mf<date>` when not given.
        #[arg(long)]
        selector: Option<String>,
        /// The key type.
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: Algorithm,
    },
    /// List the domains' keys with their DNS records.
    List,
    /// Remove a domain's key: its mail is no longer signed.
    Rm {
        /// The domain.
        domain: String,
    },
}

/// The record as a zone file line. TXT strings hold at most 255 octets (RFC 1035 §3.3), so
/// a long record is split into several, which DKIM verifiers join (RFC 6376 §3.6.2.2).
pub fn zone_line(key: &DkimKeyInfo) -> String {
    let strings: Vec<String> = key
        .dns_txt
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{}. IN TXT {}", key.dns_name, strings.join(" "))
}

/// Runs one `mailctl dkim` command.
pub async fn dkim(mut client: DirectoryClient<Channel>, action: DkimAction) -> anyhow::Result<()> {
    match action {
        DkimAction::Generate {
            domain,
            selector,
            algorithm,
        } => {
            let algorithm = match algorithm {
                Algorithm::Rsa => DkimAlgorithm::RsaSha256,
                Algorithm::Ed25519 => DkimAlgorithm::Ed25519Sha256,
            };
            let key = client
                .generate_dkim_key(GenerateDkimKeyRequest {
                    domain,
                    selector: selector.unwrap_or_default(),
                    algorithm: algorithm as i32,
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            println!("{}", zone_line(&key));
        }
        DkimAction::List => {
            let list = client
                .list_dkim_keys(ListDkimKeysRequest {})
                .await
                .map_err(grpc_error)?
                .into_inner();
            for key in list.keys {
                println!("{}", zone_line(&key));
            }
        }
        DkimAction::Rm { domain } => {
            client
                .remove_dkim_key(RemoveDkimKeyRequest {
                    domain: domain.clone(),
                })
                .await
                .map_err(grpc_error)?;
            println!("DKIM key of {domain} removed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_records_are_split_into_strings_of_255() {
        let key = DkimKeyInfo {
            dns_name: "s._domainkey.x.test".into(),
            dns_txt: format!("v=DKIM1; k=rsa; p={}", "A".repeat(392)),
            ..Default::default()
        };
        let line = zone_line(&key);
        assert!(line.starts_with("s._domainkey.x.test. IN TXT \"v=DKIM1; k=rsa; p=AAA"));
        let strings: Vec<&str> = line.split('"').filter(|s| !s.trim().is_empty()).collect();
        assert_eq!(strings.len(), 3);
        assert_eq!(strings[1].len(), 255);
        assert_eq!(strings[2].len(), 410 - 255);
    }
}
