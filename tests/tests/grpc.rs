//! The gRPC surface: health and reflection on every server, Directory errors as proper
//! statuses, and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used)]

use mailflow_proto::v1::{
    AddDomainRequest, AddUserRequest, ListDomainsRequest, ListUsersRequest,
    directory_client::DirectoryClient,
};
use mailflow_tests::stack::{INGRESS, POLICY, RELAY, local};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn serving(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel(addr).await);
    let resp = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    resp.status()
}

async fn services(addr: std::net::SocketAddr) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    match first.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_server_has_health_and_reflection() {
    let (stack, _dns) = local().await;
    for service in ["", "mailflow.v1.Policy", "mailflow.v1.Directory"] {
        assert_eq!(
            serving(stack.policy, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    for service in ["", "mailflow.v1.Queue"] {
        assert_eq!(
            serving(stack.queue, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let policy = services(stack.policy).await;
    for name in [
        "mailflow.v1.Policy",
        "mailflow.v1.Directory",
        "grpc.health.v1.Health",
    ] {
        assert!(
            policy.iter().any(|s| s == name),
            "{name} missing from {policy:?}"
        );
    }
    let queue = services(stack.queue).await;
    assert!(queue.iter().any(|s| s == "mailflow.v1.Queue"), "{queue:?}");
    // The ingress speaks SMTP, and serves health on its own address.
    assert_eq!(
        serving(stack.ingress_health, "").await,
        ServingStatus::Serving
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_lists_and_refuses_bad_input_with_proper_codes() {
    let (stack, _dns) = local().await;
    let mut dir = DirectoryClient::connect(format!("http://{}", stack.policy))
        .await
        .unwrap();
    dir.add_domain(AddDomainRequest {
        domain: "Second.TEST".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let domains: Vec<String> = dir
        .list_domains(ListDomainsRequest {})
        .await
        .unwrap()
        .into_inner()
        .domains
        .into_iter()
        .map(|d| d.domain)
        .collect();
    assert_eq!(domains, vec!["example.test", "second.test"]);
    let users = dir
        .list_users(ListUsersRequest {
            domain: "example.test".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].address, "demo@example.test");

    let bad_domain = dir
        .add_domain(AddDomainRequest {
            domain: "not a domain".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_domain.code(), tonic::Code::InvalidArgument);
    let not_local = dir
        .add_user(AddUserRequest {
            address: "x@elsewhere.test".into(),
            password: "pw".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_local.code(), tonic::Code::FailedPrecondition);
    let no_password = dir
        .add_user(AddUserRequest {
            address: "x@example.test".into(),
            password: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_password.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_exit_cleanly_on_sigterm() {
    let (mut stack, _dns) = local().await;
    for name in [INGRESS, RELAY, POLICY] {
        let status = stack.terminate(name).await;
        assert!(status.success(), "{name} exited with {status}");
    }
}

/// Two policy replicas share the directory: a user added through one is known to the other
/// within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_change_reaches_another_replica_within_a_second() {
    use mailflow_proto::v1::{
        CheckRecipientRequest, SessionInfo, policy_client::PolicyClient, verdict::Action,
    };
    use std::time::{Duration, Instant};

    let (stack, _dns) = local().await;
    let (replica, _child) = stack.start_replica(mailflow_tests::stack::POLICY).await;
    let mut other = PolicyClient::new(channel(replica).await);
    let ask = || CheckRecipientRequest {
        session: Some(SessionInfo {
            client_ip: "192.0.2.1".into(),
            helo: "client.test".into(),
            auth_identity: String::new(),
            listener: "mx".into(),
        }),
        sender: "someone@client.test".into(),
        recipient: "newcomer@example.test".into(),
    };
    let before = other.check_recipient(ask()).await.unwrap().into_inner();
    assert_eq!(before.action(), Action::Reject);
    assert_eq!(before.code, 550);
    stack.add_user("newcomer@example.test", "pw").await;
    let added = Instant::now();
    loop {
        let v = other.check_recipient(ask()).await.unwrap().into_inner();
        if v.action() == Action::Accept {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(1),
            "the other replica did not see the user within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
