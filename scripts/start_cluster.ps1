<#
.SYNOPSIS
Starts the greet cluster, runs greet-client against it, and stops it.

.DESCRIPTION
  server-A  port 8001  fails every call for 10s after 100 calls
  server-B  port 8002  fails 10% of calls at random
  server-C  port 8003  normal

Health, status and metrics of each server: http://localhost:1800N/health,
/status, /metrics. Logs go to scripts\logs\, pid files to scripts\run\.
-ClientArgs passes arguments to greet-client.

.EXAMPLE
scripts\start_cluster.ps1
.EXAMPLE
scripts\start_cluster.ps1 -ClientArgs '--scenario', 'load', '--requests', '5000', '--concurrency', '50'
.EXAMPLE
scripts\start_cluster.ps1 -Registry etcd -RegistryAddr http://127.0.0.1:2379
.EXAMPLE
scripts\start_cluster.ps1 -Tls
Mutual TLS on every gRPC hop: a throw-away CA, server and client
certificates are made in scripts\tls\ (by the make_certs example, no openssl
needed).
#>
[CmdletBinding(PositionalBinding = $false)]
param(
    # Registry backend: static (default), etcd or consul.
    [ValidateSet('static', 'etcd', 'consul')]
    [string]$Registry = $(if ($env:FYERRPC_REGISTRY) { $env:FYERRPC_REGISTRY } else { 'static' }),
    # etcd endpoints or Consul agent address.
    [string]$RegistryAddr = $env:FYERRPC_REGISTRY_ADDR,
    # Build and run optimized binaries.
    [switch]$Release,
    # Leave the servers running after the client (stop them with stop_cluster.ps1).
    [switch]$Keep,
    # Mutual TLS on every gRPC hop, with throw-away certificates in scripts\tls\.
    [switch]$Tls,
    # Port of server-A; B and C take the next two.
    [int]$BasePort = $(if ($env:BASE_PORT) { [int]$env:BASE_PORT } else { 8001 }),
    # Arguments for greet-client.
    [Parameter(ValueFromRemainingArguments = $true)]
    [string[]]$ClientArgs = @()
)

$ErrorActionPreference = 'Stop'
$ScriptDir = $PSScriptRoot
$Root = Split-Path -Parent $ScriptDir
$LogDir = Join-Path $ScriptDir 'logs'
$RunDir = Join-Path $ScriptDir 'run'
$HealthOffset = 10000
$ReadyTimeout = 30
$BuildProfile = if ($Release) { 'release' } else { 'debug' }
$OnWindows = $env:OS -eq 'Windows_NT'
$Exe = if ($OnWindows) { '.exe' } else { '' }

$RegistryFlags = @('--registry', $Registry)
if ($RegistryAddr) { $RegistryFlags += @('--registry-addr', $RegistryAddr) }

# Build once; the servers and the client run the built binaries.
Write-Host "Building greet-server and greet-client ($BuildProfile)..."
$Build = @('build', '--manifest-path', (Join-Path $Root 'Cargo.toml'), '-p', 'fyerrpc-demo', '--bins')
if ($Release) { $Build += '--release' }
if ($Registry -ne 'static') { $Build += @('--features', $Registry) }
& cargo @Build
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
$TargetDir = if ($env:CARGO_TARGET_DIR) { $env:CARGO_TARGET_DIR } else { Join-Path $Root 'target' }
$ServerBin = Join-Path (Join-Path $TargetDir $BuildProfile) "greet-server$Exe"
$ClientBin = Join-Path (Join-Path $TargetDir $BuildProfile) "greet-client$Exe"

$ServerTlsFlags = @()
$ClientTlsFlags = @()
if ($Tls) {
    $TlsDir = Join-Path $ScriptDir 'tls'
    if (Test-Path $TlsDir) { Remove-Item -Recurse -Force $TlsDir }
    $Certs = @('run', '--manifest-path', (Join-Path $Root 'Cargo.toml'), '-p', 'fyerrpc-demo',
        '--example', 'make_certs', '--', $TlsDir)
    & cargo @Certs
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    $ServerTlsFlags = @('--tls-cert', (Join-Path $TlsDir 'server.pem'), '--tls-key', (Join-Path $TlsDir 'server.key'),
        '--tls-client-ca', (Join-Path $TlsDir 'ca.pem'))
    $ClientTlsFlags = @('--tls-ca', (Join-Path $TlsDir 'ca.pem'), '--tls-cert', (Join-Path $TlsDir 'client.pem'),
        '--tls-key', (Join-Path $TlsDir 'client.key'))
}

# Leftovers of an earlier run would hold the ports.
& (Join-Path $ScriptDir 'stop_cluster.ps1') -Quiet
New-Item -ItemType Directory -Force -Path $LogDir, $RunDir | Out-Null

function Start-GreetServer([string]$Name, [int]$Port, [string[]]$Extra = @()) {
    $key = $Name.ToLower()
    $argList = @('--port', "$Port", '--id', "server-$Name") + $RegistryFlags + $ServerTlsFlags + $Extra
    $process = Start-Process -FilePath $ServerBin -ArgumentList $argList -NoNewWindow -PassThru `
        -RedirectStandardOutput (Join-Path $LogDir "server_$key.log") `
        -RedirectStandardError (Join-Path $LogDir "server_$key.err.log")
    Set-Content -Path (Join-Path $RunDir "server_$key.pid") -Value $process.Id
    return $process
}

function Wait-Healthy([string]$Name, [int]$Port, $Process) {
    $url = "http://127.0.0.1:$($Port + $HealthOffset)/health"
    $deadline = (Get-Date).AddSeconds($ReadyTimeout)
    while ((Get-Date) -lt $deadline) {
        if ($Process.HasExited) {
            $log = Join-Path $LogDir "server_$($Name.ToLower()).err.log"
            Write-Host "server-$Name exited; its log ($log):"
            Get-Content $log -Tail 20 | Write-Host
            throw "server-$Name failed to start"
        }
        try {
            $reply = Invoke-WebRequest -Uri $url -UseBasicParsing -TimeoutSec 2
            if ($reply.StatusCode -eq 200) {
                Write-Host "  server-$Name is up (http://localhost:$($Port + $HealthOffset)/health)"
                return
            }
        } catch {
            # Not listening yet, or not healthy yet.
        }
        Start-Sleep -Milliseconds 200
    }
    throw "server-$Name did not become healthy within ${ReadyTimeout}s"
}

$PortA = $BasePort
$PortB = $BasePort + 1
$PortC = $BasePort + 2
$status = 1
try {
    Write-Host "Starting server cluster for failover demonstration (registry: $Registry)..."
    Write-Host "Starting Server A (Port $PortA) - Fails after 100 requests for 10s"
    $a = Start-GreetServer 'A' $PortA @('--fail-after', '100', '--fail-duration', '10s')
    Write-Host "Starting Server B (Port $PortB) - 10% random failure rate"
    $b = Start-GreetServer 'B' $PortB @('--fail-rate', '0.1')
    Write-Host "Starting Server C (Port $PortC) - Normal operation"
    $c = Start-GreetServer 'C' $PortC

    Wait-Healthy 'A' $PortA $a
    Wait-Healthy 'B' $PortB $b
    Wait-Healthy 'C' $PortC $c

    Write-Host "Starting failover client demo (log: $(Join-Path $LogDir 'client.log'))..."
    $servers = "localhost:$PortA,localhost:$PortB,localhost:$PortC"
    & $ClientBin @RegistryFlags @ClientTlsFlags --servers $servers @ClientArgs | Tee-Object -FilePath (Join-Path $LogDir 'client.log')
    $status = $LASTEXITCODE
} finally {
    # Runs on errors and on Ctrl-C too.
    if ($Keep -and $status -eq 0) {
        Write-Host 'Servers left running; stop them with scripts\stop_cluster.ps1'
    } else {
        & (Join-Path $ScriptDir 'stop_cluster.ps1') -Quiet
    }
}
exit $status
