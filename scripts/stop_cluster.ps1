<#
.SYNOPSIS
Stops the greet servers started by start_cluster.ps1.

.DESCRIPTION
On Linux and macOS each server gets SIGTERM (it deregisters and drains), and
is killed if still running after 15 s. Windows has no SIGTERM for console
programs: the servers are ended at once, and their entries in etcd or Consul
expire after their TTL (the static registry needs no clean-up).
#>
[CmdletBinding()]
param(
    # Print nothing.
    [switch]$Quiet
)

$RunDir = Join-Path $PSScriptRoot 'run'
$Grace = 15
$OnWindows = $env:OS -eq 'Windows_NT'

function Say([string]$Text) { if (-not $Quiet) { Write-Host $Text } }

# The process behind a pid file, if it is still a greet-server.
function Get-Ours([int]$Id) {
    $p = Get-Process -Id $Id -ErrorAction SilentlyContinue
    if ($p -and $p.ProcessName -like 'greet-server*') { return $p }
    return $null
}

if (-not (Test-Path $RunDir)) { exit 0 }
$stopping = @()
foreach ($file in Get-ChildItem -Path $RunDir -Filter '*.pid') {
    $text = (Get-Content -Path $file.FullName -Raw).Trim()
    $id = 0
    if ([int]::TryParse($text, [ref]$id)) {
        $p = Get-Ours $id
        if ($p) {
            Say "Stopping $($file.BaseName) (pid $id)"
            if ($OnWindows) {
                Stop-Process -Id $id -Force -ErrorAction SilentlyContinue
            } else {
                & kill -TERM $id
                $stopping += $id
            }
        }
    }
    Remove-Item -Path $file.FullName -Force
}

$deadline = (Get-Date).AddSeconds($Grace)
foreach ($id in $stopping) {
    while ((Get-Ours $id) -and (Get-Date) -lt $deadline) { Start-Sleep -Milliseconds 100 }
    if (Get-Ours $id) {
        Say "pid $id did not stop in ${Grace}s; killing it"
        Stop-Process -Id $id -Force -ErrorAction SilentlyContinue
    }
}
Say 'Cluster stopped.'
exit 0
